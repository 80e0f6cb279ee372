"""Step output reaches an operator's terminal shown, never obeyed; a file gets it verbatim.

The end-to-end tests run the real commands on a pseudo-terminal (what an operator's shell
gives them) and through a pipe, against a run whose step prints escape sequences that set
the window title, write the clipboard (OSC 52) and clear the screen.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli, wait_for_event

from runbook_celery.cli.terminal import RESET, is_terminal, neutralise

# ---------------------------------------------------------------- is_terminal()


def test_is_terminal_uses_no_deprecated_click_api(capsys: pytest.CaptureFixture[str]) -> None:
    """click 8.5 deprecated get_text_stream (gone in click 9): pytest's "error" warning
    filter turns its DeprecationWarning into a failure here."""
    assert is_terminal() is False  # captured by pytest: not a terminal
    assert is_terminal(err=True) is False


# ---------------------------------------------------------------- neutralise()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),  # clipboard write
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # window title
        ("\x1b]8;;http://evil\x1b\\link", "\\x1b]8;;http://evil\\x1b\\link"),  # hyperlink
        ("\x1bP+q544e\x1b\\", "\\x1bP+q544e\\x1b\\"),  # DCS query
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear screen, cursor home
        ("ok\x1b[1A\x1b[2Kfake", "ok\\x1b[1A\\x1b[2Kfake"),  # rewrite the line above
        ("\x9b2J\x9d0;t\x9c", "\\x9b2J\\x9d0;t\\x9c"),  # 8-bit CSI and OSC
        ("FAILED\rOK    ", "FAILED\\x0dOK    "),  # carriage return overwrites
        ("FAILED\x08\x08OK", "FAILED\\x08\\x08OK"),
        ("bell\x07 del\x7f nul\x00", "bell\\x07 del\\x7f nul\\x00"),
        ("plain text, tabs\tand ünïcödé ✓", "plain text, tabs\tand ünïcödé ✓"),
        ("windows line\r", "windows line"),
    ],
)
def test_controls_are_shown_not_obeyed(raw, shown):
    assert neutralise(raw) == shown
    assert "\x1b" not in neutralise(raw) and "\x9b" not in neutralise(raw)


def test_colours_are_kept_and_reset_at_the_end_of_their_line():
    assert neutralise("\x1b[1;31merror\x1b[0m: x") == f"\x1b[1;31merror\x1b[0m: x{RESET}"
    assert neutralise("\x1b[32mgreen\nplain") == f"\x1b[32mgreen{RESET}\nplain"


def test_without_colour_every_escape_is_shown():
    assert neutralise("\x1b[31mred", colour=False) == "\\x1b[31mred"


def test_a_colour_change_cannot_smuggle_another_sequence():
    shown = neutralise("\x1b[31;\x1b]52;c;x\x07m")
    assert "\x1b]" not in shown


# ---------------------------------------------------------------- the real commands

HOSTILE = r"""
name: hostile
params:
  who: "me\e]0;param-title\a"
steps:
  - id: noisy
    run: |
      printf 'title \033]0;pwned\007 clip \033]52;c;cHduZWQ=\007 '
      printf 'wipe \033[2J in \033[31mred\033[0m\n'
      printf 'err \033]52;c;ZXZpbA==\007\n' >&2
      exit 1
"""
GATED = r"""
name: hostile-gate
steps:
  - id: deploy
    approval: {prompt: "Ship? \e]52;c;cHduZWQ=\a"}
    run: "true"
"""


def in_terminal(*args: str, timeout: float = 60) -> tuple[int, bytes]:
    """Run the CLI with a pseudo-terminal as stdin, stdout and stderr; returns code and bytes."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbook_celery", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=max(1, deadline - time.monotonic())), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def assert_shown_not_obeyed(out: bytes) -> None:
    assert b"\x1b]" not in out, out  # no OSC: title, clipboard, hyperlinks
    assert b"\x1b[2J" not in out, out  # no screen wipe
    assert b"\x07" not in out, out


@pytest.fixture(scope="module")
def hostile_run(worker, redis_client, tmp_path_factory):  # type: ignore[no-untyped-def]
    from runbook_celery.core.settings import get_settings
    from runbook_celery.store import RunStore

    store = RunStore(redis_client, get_settings().prefix, 3600)
    path = tmp_path_factory.mktemp("hostile") / "hostile.yaml"
    path.write_text(HOSTILE)
    res = run_cli("trigger", str(path))
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip()
    wait_for_event(store, run_id, "workflow_failed", timeout=60)
    return run_id


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_logs_on_a_terminal_show_escape_sequences_and_keep_colours(hostile_run):
    code, out = in_terminal("logs", hostile_run)
    assert code == 0
    assert_shown_not_obeyed(out)
    assert b"\\x1b]52;c;cHduZWQ=\\x07" in out and b"\\x1b]52;c;ZXZpbA==\\x07" in out
    assert b"\\x1b[2J" in out
    assert b"\x1b[31mred\x1b[0m" in out  # a colour is harmless, and build logs use them


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_logs_into_a_file_or_pipe_are_byte_for_byte(hostile_run):
    res = run_cli("logs", hostile_run)
    assert res.returncode == 0
    assert res.stdout == (
        "title \x1b]0;pwned\x07 clip \x1b]52;c;cHduZWQ=\x07 wipe \x1b[2J in \x1b[31mred\x1b[0m\n"
    )
    assert res.stderr == "err \x1b]52;c;ZXZpbA==\x07\n"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args",
    [
        ("status", "RUN"),
        ("watch", "RUN"),
        ("runs", "--workflow", "hostile"),
    ],
    ids=lambda a: a[0],
)
def test_every_view_of_a_run_on_a_terminal_neutralises_its_text(hostile_run, args):
    # (events are covered with an approval prompt below: this run's events hold no text)
    code, out = in_terminal(*[hostile_run if a == "RUN" else a for a in args])
    assert code in (0, 1), out
    assert_shown_not_obeyed(out)
    if args[0] in ("status", "watch"):
        assert b"\\x1b]52;c;ZXZpbA==\\x07" in out  # the failed step's stderr tail
    if args[0] == "runs":
        assert b"who=me\\x1b]0;param-title\\x07" in out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_approval_prompt_in_events_is_shown_not_obeyed(worker, store, write_workflow):
    res = run_cli("trigger", str(write_workflow(GATED)))
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip()
    try:
        wait_for_event(store, run_id, "step_awaiting_approval", "deploy", timeout=60)
        code, out = in_terminal("events", "--run", run_id)
        assert code == 0
        assert_shown_not_obeyed(out)
        assert b"prompt=Ship? \\x1b]52;c;cHduZWQ=\\x07" in out
    finally:
        assert run_cli("reject", run_id, "deploy").returncode == 0
