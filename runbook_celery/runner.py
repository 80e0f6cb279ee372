"""Run one step's Bash: own session, inputs via environment only, bounded capture, no orphans.

Process layout of a step::

    worker pool process
      └── bash -eo pipefail (session + process-group leader, runs the step via eval)
            ├── lifeline subshell: blocks reading a pipe whose write end only the pool
            │   process holds; on EOF (step over, or the pool process died, even by
            │   SIGKILL) it SIGKILLs the whole process group
            └── the step's own commands and their children

So nothing the step started outlives it or its worker, and a timeout or cancel can
signal the group (SIGTERM, a grace period, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .events import FailureReason

COMMAND_VAR = "RUNBOOK_COMMAND__"
LINE_LIMIT = 8192  # characters kept of one log line
TAIL_LINES = 200  # lines of each stream kept in memory

_OUTPUT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

OnLine = Callable[[str, str], None]  # (stream name, line)
Tick = Callable[[], "bool | str"]  # truthy when the step must stop: True (cancel) or a reason
HANDBACK = "handback"


@dataclass
class BashResult:
    """What a step's Bash did; ``reason`` is set when it did not simply exit."""

    exit_code: int | None
    outputs: dict[str, str] = field(default_factory=dict)
    stdout_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    reason: str | None = None
    message: str | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.reason is None


def _wrapper(lifeline_fd: int) -> str:
    return (
        # `|| :` matters: -e is inherited, and read fails on EOF, which is the signal
        f"( read -r -u {lifeline_fd} _ || : ; kill -KILL 0 ) </dev/null >/dev/null 2>&1 & "
        f"exec {lifeline_fd}<&- ; "
        f'__runbook_cmd=${COMMAND_VAR}; unset {COMMAND_VAR}; eval "$__runbook_cmd"'
    )


def run_bash(
    command: str,
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    output_limit: int = 1024 * 1024,
    timeout: float | None = None,
    kill_grace: float = 10.0,
    tick: Tick | None = None,
    tick_interval: float = 0.5,
    on_line: OnLine | None = None,
) -> BashResult:
    """Run ``command`` with ``bash -eo pipefail`` and collect exit code, outputs and tails."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runbook-step-") as tmp:
        output_path = os.path.join(tmp, "output")
        open(output_path, "wb").close()
        full_env = dict(env)
        full_env["RUNBOOK_OUTPUT"] = output_path
        full_env[COMMAND_VAR] = command
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                ["bash", "-eo", "pipefail", "-c", _wrapper(read_fd)],
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(read_fd,),
            )
        except OSError as exc:
            os.close(write_fd)
            return BashResult(
                None, reason=FailureReason.SPAWN_ERROR, message=f"cannot start bash: {exc}"
            )
        finally:
            os.close(read_fd)
        readers = [
            _Reader(proc.stdout, "stdout", on_line),  # type: ignore[arg-type]
            _Reader(proc.stderr, "stderr", on_line),  # type: ignore[arg-type]
        ]
        reason: str | None = None
        try:
            reason = _supervise(proc, timeout, kill_grace, tick, tick_interval)
        finally:
            os.close(write_fd)  # lifeline fires: whatever the step left behind dies
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for r in readers:
                r.join()
        result = BashResult(
            exit_code=proc.returncode,
            stdout_tail=list(readers[0].tail),
            stderr_tail=list(readers[1].tail),
            reason=reason,
            duration=time.monotonic() - started,
        )
        if reason == FailureReason.TIMEOUT:
            result.message = f"timed out after {timeout:g}s"
        elif reason == FailureReason.CANCELLED:
            result.message = "cancelled"
        elif reason == HANDBACK:
            result.message = "handed back: the worker is shutting down"
        elif result.exit_code == 0:
            _collect_outputs(output_path, output_limit, result)
        return result


def _supervise(
    proc: subprocess.Popen[bytes],
    timeout: float | None,
    kill_grace: float,
    tick: Tick | None,
    tick_interval: float,
) -> str | None:
    """Wait for the step; stop it on timeout or when ``tick`` says so."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        wait_for = tick_interval
        if deadline is not None:
            wait_for = max(0.0, min(wait_for, deadline - time.monotonic()))
        try:
            proc.wait(timeout=wait_for)
            return None
        except subprocess.TimeoutExpired:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            _stop_group(proc, kill_grace)
            return FailureReason.TIMEOUT
        verdict = tick() if tick is not None else False
        if verdict:
            _stop_group(proc, kill_grace)
            return HANDBACK if verdict == HANDBACK else FailureReason.CANCELLED


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the step's process group, then SIGKILL it after ``grace`` seconds."""
    _killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Reader(threading.Thread):
    """Reads one stream line by line, keeps a bounded tail and forwards each line."""

    def __init__(self, stream, name: str, on_line: OnLine | None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True, name=f"runbook-{name}")
        self.stream = stream
        self.stream_name = name
        self.on_line = on_line
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.start()

    def run(self) -> None:
        with self.stream:
            for raw in self.stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")[:LINE_LIMIT]
                self.tail.append(line)
                if self.on_line is not None:
                    try:
                        self.on_line(self.stream_name, line)
                    except Exception:  # a log sink must never break the step
                        self.on_line = None


def _collect_outputs(path: str, limit: int, result: BashResult) -> None:
    size = os.path.getsize(path)
    if size > limit:
        result.reason = FailureReason.OUTPUT_TOO_LARGE
        result.message = (
            f"$RUNBOOK_OUTPUT holds {size} bytes, more than the {limit}-byte limit "
            "(RUNBOOK_OUTPUT_LIMIT)"
        )
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    try:
        result.outputs = parse_outputs(text)
    except ValueError as exc:
        result.reason = FailureReason.EXIT_CODE
        result.message = f"bad $RUNBOOK_OUTPUT: {exc}"


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
