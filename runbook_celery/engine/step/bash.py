"""Stage: run the step's Bash under its lease, streaming its log.

While Bash runs, a tick (called by the runner) flushes the log, notices a cancel, a
worker shutdown (the step is handed back) or a lost lease (the result is discarded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...store.logsink import StepLogSink
from .. import workerstore
from ..capture import StdoutCapture
from ..runner import BashResult, run_bash
from .environment import checked_inputs, environment

if TYPE_CHECKING:
    from .delivery import StepExecution

HANDBACK = "handback"  # the reason of a result stopped by a worker shutdown


def run(
    execution: StepExecution, need_outputs: dict[str, Any], override: dict[str, str]
) -> BashResult:
    x = execution
    env, resolve = environment(x, need_outputs, override)
    sink = StepLogSink(
        x.store.r,
        x.store.keys,
        x.run_id,
        x.step_id,
        x.settings.log_lines,
        max_bytes=x.settings.log_bytes,
    )
    grace = x.spec.kill_grace
    capture = StdoutCapture(x.settings.output_limit) if x.spec.output else None
    try:
        cwd = checked_inputs(x, override, resolve)
        if isinstance(cwd, BashResult):  # refused: fails at once, not retried
            sink("stderr", f"[runbook] {cwd.message}")
            return cwd
        result = run_bash(
            x.spec.command,
            env,
            cwd=cwd,
            output_limit=x.settings.output_limit,
            timeout=x.spec.timeout,
            kill_grace=x.settings.kill_grace if grace is None else grace,
            tick=x._tick(sink),
            on_line=capture.tee(sink) if capture else sink,
            on_spawn=x.keeper.attach if x.keeper else None,
            masker=x.masker,
        )
        if capture and x.spec.output:
            capture.into(result, x.spec.output)
        return result
    finally:
        if x.keeper:
            x.keeper.detach()
        sink.close()


def tick(execution: StepExecution, sink: StepLogSink) -> Callable[[], bool | str]:
    """Called while Bash runs: flush logs, notice cancel, shutdown or a lost lease.

    The lease itself is renewed by the delivery's LeaseKeeper thread; here the
    guardian's kill time follows its renewals (from this thread, which also releases
    the step's process group, so the guardian never hears of a released group)."""
    x = execution
    flag = workerstore.shutdown_flag_path(os.getppid())
    keeper = x.keeper
    survives_cancel = x.parent is None and x.step_id in x.ctx.survivors

    def tick() -> bool | str:
        if keeper is not None:
            if keeper.lost is not None:
                return True  # stop now: the result is discarded (see fenced)
            keeper.push_deadline()
        sink.flush()
        if os.path.exists(flag):
            return HANDBACK
        if survives_cancel:  # cleanup (always()/cancelled()): a cancel must not stop it
            return False
        try:
            return x.store.cancel_requested(x.run_id)
        except Exception:  # Redis blip: keep the step running, try again next tick
            return False

    return tick


def fenced(execution: StepExecution, result: BashResult) -> bool:
    """Whether this attempt was stopped because its lease could not be kept (so its
    result says nothing about the step)."""
    keeper = execution.keeper
    if keeper is None:
        return False
    killed = result.exit_code is not None and result.exit_code < 0
    return keeper.lost is not None or (killed and keeper.expired())
