"""``$RUNBOOK_OUTPUT``: the file a step writes its outputs to, and reading it back.

Lines ``key=value`` and blocks ``key<<DELIM`` ... ``DELIM`` (GitHub Actions style).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import stat
from typing import TextIO

from ..store.events import FailureReason
from . import stepuser

_OUTPUT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

_output_dir: str | None = None
_output_count = itertools.count()


class BadOutputs(Exception):
    """The step's outputs cannot be taken: ``reason`` and ``message`` say why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def output_file() -> str:
    """A fresh path for $RUNBOOK_OUTPUT in a private (0700) directory this process keeps.

    The file is not created: a step that writes outputs creates it with ``>>``, and a
    step without outputs (most steps) costs no file-system calls beyond one stat.
    """
    global _output_dir
    if _output_dir is None or not os.path.isdir(_output_dir):
        _output_dir = stepuser.make_output_dir()
    path = os.path.join(_output_dir, f"output-{next(_output_count)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an earlier process with this pid that was killed
    return path


def _open_outputs(path: str) -> int | None:
    """Open $RUNBOOK_OUTPUT as the step left it: a plain file, never through a link (a step
    running as another user must not make this process read a file it cannot read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:  # the step wrote no outputs
        return None
    except OSError:
        raise ValueError("$RUNBOOK_OUTPUT must be a regular file, not a link") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise ValueError("$RUNBOOK_OUTPUT must be a regular file with no other links")
    return fd


def collect_outputs(path: str, limit: int) -> dict[str, str]:
    """The outputs the step wrote to ``path`` (none when it wrote no file).

    Raises BadOutputs when the file is not a plain file, is over ``limit`` bytes or cannot
    be parsed.
    """
    try:
        fd = _open_outputs(path)
    except ValueError as exc:
        raise BadOutputs(FailureReason.EXIT_CODE, f"bad $RUNBOOK_OUTPUT: {exc}") from None
    if fd is None:
        return {}
    with open(fd, encoding="utf-8", errors="replace") as fh:
        return _read_outputs(fh, os.fstat(fd).st_size, limit)


def _read_outputs(fh: TextIO, size: int, limit: int) -> dict[str, str]:
    if size > limit:
        raise BadOutputs(
            FailureReason.OUTPUT_TOO_LARGE,
            f"$RUNBOOK_OUTPUT holds {size} bytes, more than the {limit}-byte limit "
            "(RUNBOOK_OUTPUT_LIMIT)",
        )
    text = fh.read()
    try:
        return parse_outputs(text)
    except ValueError as exc:
        raise BadOutputs(FailureReason.EXIT_CODE, f"bad $RUNBOOK_OUTPUT: {exc}") from None


def parse_outputs(text: str) -> dict[str, str]:
    """Parse ``key=value`` lines and ``key<<DELIM`` ... ``DELIM`` blocks (GitHub Actions style)."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            key, delim = key.strip(), delim.strip()
            if not _OUTPUT_KEY.match(key) or not delim:
                raise ValueError(f"line {i}: bad multi-line output header {line[:60]!r}")
            body: list[str] = []
            while i < len(lines) and lines[i] != delim:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"line {i}: output {key!r} is missing its end marker {delim!r}")
            i += 1
            outputs[key] = "\n".join(body)
            continue
        if "=" not in line:
            raise ValueError(f"line {i}: expected key=value, got {line[:60]!r}")
        key, value = line.split("=", 1)
        key = key.strip()
        if not _OUTPUT_KEY.match(key):
            raise ValueError(f"line {i}: bad output name {key[:60]!r}")
        outputs[key] = value
    return outputs
