"""Step output on the operator's terminal: shown, never obeyed.

A step's output (its log lines, stderr tail, and any text a definition or an operator put in
an event) is untrusted. Written raw to a terminal, escape sequences in it would act: set the
window title, write the clipboard (OSC 52), clear the screen or move the cursor to rewrite
what is already shown. So on a terminal every control character is made visible
(``ESC`` becomes the text ``\\x1b``), except plain colour changes (SGR, ``ESC [ ... m``),
which build tools print all the time and which cannot do any of that. Anywhere else (a file,
a pipe) the bytes are written as they are, so ``runbook-celery logs RUN > out.log`` is
faithful.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import click

RESET = "\x1b[0m"
# A colour change: ESC [ digits and semicolons m. Nothing else is let through.
_SGR = re.compile(r"\x1b\[[0-9;]{0,64}m")
# C0 controls except tab and line feed, DEL, and the C1 controls (0x9b is an 8-bit CSI,
# 0x9d an 8-bit OSC). Carriage return and backspace too: they overwrite what is shown.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def neutralise(text: str, *, colour: bool = True) -> str:
    """``text`` safe to write to a terminal: controls shown as ``\\xNN``, colours kept.

    Line breaks and tabs stay. With ``colour=False`` colour changes are made visible too
    (for renderers such as rich that style text themselves). A line that changed colour
    ends with a reset, so a step cannot leave our own output coloured.
    """
    return "\n".join(_neutralise_line(line, colour) for line in text.split("\n"))


def _neutralise_line(line: str, colour: bool) -> str:
    if line.endswith("\r"):  # CRLF output: the terminal would not show this one anyway
        line = line[:-1]
    if not colour:
        return _CONTROL.sub(_visible, line)
    parts = _SGR.split(line)
    codes = _SGR.findall(line)
    out = [_CONTROL.sub(_visible, parts[0])]
    for code, part in zip(codes, parts[1:], strict=True):
        out += [code, _CONTROL.sub(_visible, part)]
    if codes:
        out.append(RESET)
    return "".join(out)


def is_terminal(err: bool = False) -> bool:
    """True when stdout (or stderr) is an interactive terminal."""
    # the streams click.echo writes to (click's get_text_stream, deprecated in click 8.5,
    # wraps these same ones); either may be None (pythonw) or a stand-in without isatty
    stream = sys.stderr if err else sys.stdout
    isatty: Callable[[], bool] = getattr(stream, "isatty", lambda: False)
    return bool(isatty())


def use_colour(err: bool = False) -> bool:
    """Colour our own words (status, prefixes) only on a terminal, and never when the user
    asked for none (NO_COLOR, see no-color.org) or the terminal cannot show it (TERM=dumb)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(err)


def echo(text: str, *, err: bool = False) -> None:
    """Print untrusted text: neutralised on a terminal, byte for byte anywhere else."""
    if is_terminal(err):
        text = neutralise(text)
    # color=True: click would otherwise strip colour codes (only those) when not a terminal
    click.echo(text, err=err, color=True)


def echo_stderr(text: str) -> None:
    """A note for the user beside the output (e.g. a client reconnecting to Redis)."""
    echo(text, err=True)
