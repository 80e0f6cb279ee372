"""Stage: hand on what follows a recorded step, and replay a duplicate delivery.

After FINISH: publish the steps it made ready (dynamic), send the next instance of a
lane or join the instances, tell the hand-on (stored result or ``task_postrun``) what may
be ready so recovery can watch it, hand an ended child run back to its parent's step,
publish what the run's end admitted, and tell Flower about steps skipped after a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...plan.compile import DYNAMIC
from ...store import FinishOutcome, Successor
from ...store.events import StepStatus
from .. import childruns, dispatch
from ..app import note_successors
from ..taskevents import announce_skipped, step_failed
from .context import cache

if TYPE_CHECKING:
    from .delivery import StepExecution


def after_finish(
    execution: StepExecution, outcome: FinishOutcome, skip: list[str], finish: childruns.Finish
) -> None:
    """What a FINISH transition owes the run; ``finish``: how a parent's step is finished
    from outside when this ended a child run."""
    x = execution
    x.recorded = not outcome.duplicate
    if x.attempt is not None and not outcome.duplicate:
        x.stop_keeping()  # recorded: the lease is gone with it
    unsent = [c for c in outcome.ready if c not in x.sent_by_finish]
    if unsent:
        dispatch.publish_steps(x.ctx.raw, x.run_id, unsent)
    if x.parent is not None:
        x._instance_ended()
    successors(x)
    if outcome.run_status:
        cache.drop(x.run_id)
        childruns.hand_to_parent(x.store, x.run_id, x.ctx.raw, finish)
    if outcome.admitted:
        dispatch.publish_admitted(x.store, outcome.admitted)
    if skip and not outcome.duplicate:
        _announce_skipped(x, skip)


def _announce_skipped(x: StepExecution, skip: list[str]) -> None:
    """Steps the store recorded skipped after this failure that will never be tasks."""
    celery_app = getattr(x.task, "app", None)  # none: recorded from outside a task
    if celery_app is None:
        return
    hashes = x.store.step_hashes(x.run_id, skip)
    reasons = {
        sid: h.get("reason") or f"needs {x.step_id} {h.get('status')}"
        for sid, h in hashes.items()
        if h.get("status") == "skipped"
    }
    announce_skipped(celery_app, x.run_id, x.ctx.workflow, reasons)


def successors(execution: StepExecution) -> None:
    """Tell the hand-on (stored result or task_postrun) what may be ready after this
    step: its children in the DAG. An instance's lane and its step's join are watched
    by ``instance_ended`` itself; when this task recorded that join, the fanned-out
    step hands on with it, and its children are this task's successors."""
    x = execution
    if x.task is None or x.inline:  # an operator's decision; a join done inline
        return
    if not x.settings.broker_url.startswith(("redis", "rediss")):
        return  # an AMQP broker does not lose messages on their way: nothing to watch
    member = f"{x.run_id}|{x.step_id}"
    if x.parent is None:
        note_successors(member, [Successor(c, n) for c, n in x.children().items()])
    elif x.joined is not None:
        succ = [Successor(c, n) for c, n in x.joined.children().items()]
        note_successors(member, succ, ended=[x.parent])
    else:
        note_successors(member, [])


def replay(execution: StepExecution, status: str, finish: childruns.Finish) -> dict[str, Any]:
    """A duplicate delivery of a finished step: never run it again, but finish handing on.

    In dynamic mode the join is idempotent, so re-doing it publishes any child that a
    crash between "recorded" and "published" would otherwise have stranded.
    """
    x = execution
    mode = x.mode or x.store.run_mode(x.run_id) or x.ctx.snapshot.mode
    childruns.after_replay(x.store, x.run_id, x.ctx.raw, finish)
    if x.parent is not None:
        x._instance_ended()  # idempotent: a crash may have come before it
    successors(x)  # and its ready successors are watched once it handed on
    if x.parent is None and mode == DYNAMIC:
        ready = x.store.rejoin(x.run_id, x.step_id, x.children())
        if ready:
            dispatch.publish_steps(x.ctx.raw, x.run_id, ready)
    elif x.parent is None and status in (StepStatus.FAILED, StepStatus.CANCELLED):
        # canvas: keep Celery from continuing past a step that did not succeed
        raise step_failed(str(status), x.step_id, "already recorded", None)
    return {"run_id": x.run_id, "step": x.step_id, "status": status, "duplicate": True}
