"""Run one step's Bash: own session, values passed as data, bounded capture, no orphans.

Process layout of a step::

    worker pool process ──pipe──> guardian (bash, own session, one per pool process)
      └── bash -eo pipefail (session + process-group leader, runs the step via eval)
            └── the step's own commands and their children

This module puts the pieces together; each lives in a module of its own:

* ``bashenv.py``: the environment Bash starts with; values too large for it as memfds.
* ``stepprocess.py``: starting the step's Bash contained (``containment.py``, and as the
  ``--step-user``, ``stepuser.py``), signalling it, ending everything it started.
* ``guardian.py``: the process every step registers its process group with first, which
  kills the groups of a pool process that died (even by SIGKILL) and keeps the lease fence.
* ``supervise.py``: waiting for the step while reading its output; timeout, cancel, hand-back.
* ``outputstream.py``: stdout and stderr as masked, bounded lines, and their tails.
* ``outputfile.py``: ``$RUNBOOK_OUTPUT``, the step's outputs.

So nothing the step started outlives it or its worker, and a timeout or cancel signals the
group (SIGTERM, a grace period, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..plan.masking import Masker
from ..store.events import FailureReason
from .bashenv import COMMAND_VAR, PlacedValues, nul_variable, place_values
from .guardian import GUARDIAN
from .outputfile import BadOutputs, collect_outputs, output_file
from .outputstream import OnLine, OutputStream, drain
from .stepprocess import end_step, spawn
from .supervise import HANDBACK, Tick, supervise


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


@dataclass(frozen=True)
class _Watch:
    """How run_bash watches a step once it runs."""

    timeout: float | None
    kill_grace: float
    tick: Tick | None
    tick_interval: float
    on_line: OnLine | None
    on_spawn: Callable[[int], None] | None
    masker: Masker | None


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
    on_spawn: Callable[[int], None] | None = None,
    masker: Masker | None = None,
) -> BashResult:
    """Run ``command`` with ``bash -eo pipefail`` and collect exit code, outputs and tails.

    ``on_spawn`` gets the step's process group id as soon as Bash runs (lease fencing).
    ``masker`` masks secrets in the output before it is cut into lines (masking.py).
    """
    started = time.monotonic()
    output_path = output_file()
    full_env = dict(env)
    full_env["RUNBOOK_OUTPUT"] = output_path
    full_env[COMMAND_VAR] = command
    if (nul := nul_variable(full_env)) is not None:
        return BashResult(None, reason=FailureReason.BAD_INPUT, message=nul)
    inputs = PlacedValues(full_env)
    watch = _Watch(timeout, kill_grace, tick, tick_interval, on_line, on_spawn, masker)
    try:
        try:
            inputs = place_values(full_env)
            proc, cgroup = spawn(inputs, cwd)
        except OSError as exc:
            return BashResult(
                None, reason=FailureReason.SPAWN_ERROR, message=f"cannot start bash: {exc}"
            )
        finally:
            inputs.close()  # the child holds its own copies until its wrapper reads them
        result = _watch(proc, cgroup, watch)
        result.duration = time.monotonic() - started
        if result.reason is None and result.exit_code == 0:
            try:
                result.outputs = collect_outputs(output_path, output_limit)
            except BadOutputs as exc:
                result.reason, result.message = exc.reason, exc.message
        return result
    finally:
        inputs.close()
        with contextlib.suppress(OSError):
            os.unlink(output_path)


def _watch(proc: subprocess.Popen[bytes], cgroup: str | None, watch: _Watch) -> BashResult:
    """Read the running step's output until it ends or is stopped; then end all it started."""
    streams = {
        proc.stdout.fileno(): OutputStream("stdout", watch.on_line, watch.masker),  # type: ignore[union-attr]
        proc.stderr.fileno(): OutputStream("stderr", watch.on_line, watch.masker),  # type: ignore[union-attr]
    }
    reason: str | None = None
    try:
        if watch.on_spawn is not None:
            watch.on_spawn(proc.pid)
        reason = supervise(
            proc, streams, watch.timeout, watch.kill_grace, watch.tick, watch.tick_interval
        )
    finally:
        end_step(proc, cgroup)  # whatever the step left behind dies
        drain(streams)
        GUARDIAN.release(proc.pid)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    out, err = streams.values()
    result = BashResult(proc.returncode, {}, list(out.tail), list(err.tail), reason)
    if reason == FailureReason.TIMEOUT:
        result.message = f"timed out after {watch.timeout:g}s"
    elif reason == FailureReason.CANCELLED:
        result.message = "cancelled"
    elif reason == HANDBACK:
        result.message = "handed back: the worker is shutting down"
    return result
