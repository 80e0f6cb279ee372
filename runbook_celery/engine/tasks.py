"""The step task: claim the step, run its Bash, record the result, hand on to what follows.

The same task serves canvas runs (Celery's chain/chord continue the DAG) and dynamic
runs (the task publishes the children whose needs have all finished). Deliveries are
at-least-once; the store's atomic claim makes a duplicate delivery of a finished step a
no-op and keeps two live copies of one step from running together.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from ..core.errors import InvalidOperation, RunNotFound, UnsupportedSnapshot
from ..plan.compile import DYNAMIC, cancel_survivors
from ..store.events import TERMINAL_RUN_STATUSES, FailureReason, StepStatus
from . import (
    childruns,
    dispatch,
    workerhooks,  # connects the per-task signals (delivery watch, chord hand-on)
    workerstore,
)
from .app import APPROVAL_TIMEOUT_TASK, FANIN_TASK, RUN_TIMEOUT_TASK, STEP_TASK, app
from .step.context import cache
from .step.delivery import StepExecution, finish_outside
from .taskevents import StepFailed, StepRequest

__all__ = ["approval_timeout", "fan_in", "finish_outside", "run_step", "run_timeout"]

log = logging.getLogger("runbook_celery.worker")


def _execution(
    task: Task[..., Any], run_id: str, step_id: str, *, fan_in: bool = False
) -> StepExecution | dict[str, Any]:
    """The delivery's context, or what to answer when its message names a run that no
    longer exists (expired, deleted) or a step the run does not have (forged, stale)."""
    settings, store = workerstore.worker_store()
    try:
        ctx = cache.get(store, run_id)
    except RunNotFound:
        log.warning("dropped %s for step %r: run %s does not exist", task.name, step_id, run_id)
        return {"run_id": run_id, "step": step_id, "status": "gone"}
    except UnsupportedSnapshot as exc:
        # recorded by a newer release: fail the run clearly rather than misread it
        log.error("refused %s for step %r: %s", task.name, step_id, exc)
        store.cancel_run(run_id, reason=FailureReason.UNSUPPORTED_SNAPSHOT)
        return {"run_id": run_id, "step": step_id, "status": "refused"}
    if not ctx.knows(step_id, fan_in=fan_in):
        log.warning("dropped %s for step %r: run %s has no such step", task.name, step_id, run_id)
        return {"run_id": run_id, "step": step_id, "status": "unknown"}
    return StepExecution(task, settings, store, ctx, run_id, step_id)


# Request: what Flower is told (taskevents); throws: an ordinary step failure is one log
# line at INFO, not a traceback at ERROR.
_STEP_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "max_retries": None,
    "acks_late": True,
    "Request": StepRequest,
    "throws": (StepFailed,),
}


@app.task(name=STEP_TASK, **_STEP_TASK_OPTIONS)
def run_step(self: Task[..., Any], run_id: str, step_id: str) -> dict[str, Any]:
    execution = _execution(self, run_id, step_id)
    if isinstance(execution, dict):
        return execution
    result = execution.guarded(execution.execute)
    if execution.mode != DYNAMIC:  # returned into a canvas: a long chain's next segment
        dispatch.publish_next_segment(execution.ctx.raw, run_id, step_id)
    return result


@app.task(name=FANIN_TASK, **_STEP_TASK_OPTIONS)
def fan_in(self: Task[..., Any], run_id: str, step_id: str) -> dict[str, Any]:
    """Join a fanned-out step: all its instances have ended; record the step itself."""
    execution = _execution(self, run_id, step_id, fan_in=True)
    if isinstance(execution, dict):
        return execution
    return execution.guarded(execution.join_instances)


@app.task(name=RUN_TIMEOUT_TASK, send_events=False)  # internal: not a step in Flower
def run_timeout(run_id: str) -> str:
    """Fires when a run's `timeout` expires: stop what is left of the run."""
    settings, store = workerstore.worker_store()
    try:
        if store.run_status(run_id) not in TERMINAL_RUN_STATUSES:
            snapshot = store.snapshot(run_id)
            keep = cancel_survivors(snapshot)
            _, final = store.cancel_run(run_id, reason=FailureReason.TIMEOUT, keep=keep)
            if keep:  # kept steps whose needs the cancel ended are ready now
                dispatch.continue_survivors(store, run_id, settings.lease_seconds)
            childruns.after_cancel(
                store,
                run_id,
                snapshot,
                final,
                reason=FailureReason.TIMEOUT,
                by=None,
                lease_seconds=settings.lease_seconds,
                finish=finish_outside,
            )
            return "timed out"
    except RunNotFound:
        pass
    return "finished in time"


@app.task(name=APPROVAL_TIMEOUT_TASK, send_events=False)  # internal: not a step in Flower
def approval_timeout(run_id: str, step_id: str) -> str:
    """An approval gate waited too long: reject the step."""
    _settings, store = workerstore.worker_store()
    try:
        status = store.step_hashes(run_id, [step_id])[step_id].get("status")
        if status != StepStatus.AWAITING_APPROVAL:
            return f"step already {status}"
        # approved (or cancelled) since that read: FINISH refuses, the gate's state stands
        finish_outside(
            run_id,
            step_id,
            StepStatus.FAILED,
            reason="approval_timeout",
            stderr=["[runbook] approval not given in time"],
            expect=StepStatus.AWAITING_APPROVAL,
        )
    except RunNotFound:
        return "run gone"
    except InvalidOperation as refused:
        return str(refused)
    return "rejected"


workerhooks.use_finish_outside(finish_outside)
