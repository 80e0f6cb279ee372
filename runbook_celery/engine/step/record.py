"""Stage: record the step's end (FINISH), or give it back, from a Bash result.

``finish`` is the one way a step's end is recorded: it masks secrets, works out what a
canvas will not run after a failure, makes the FINISH transition (waiting while Redis is
full, lease kept), then hands on (``handon.after_finish``). ``record`` turns a Bash
result into that end: success, a skip by exit code, a cancel, a retry, a pause for an
operator's decision (``policy``), or a failure; a result from an attempt that lost its
lease, or was stopped by a worker shutdown, is handed back unrecorded.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore

from ...core.errors import InvalidOperation
from ...plan.compile import CANVAS, DYNAMIC
from ...store import Decision, FinishOutcome, Outcome, Successor, now_iso
from ...store.events import FailureReason, StepStatus
from .. import chainlink, dispatch, readychildren
from ..app import app
from ..fullredis import wait_while_full, worker_stopping
from ..runner import BashResult
from ..taskevents import step_failed
from . import policy
from .bash import HANDBACK, fenced

if TYPE_CHECKING:
    from .delivery import StepExecution

STDERR_TAIL_LINES = 20

log = logging.getLogger("runbook_celery.worker")


def finish(
    execution: StepExecution,
    status: StepStatus,
    *,
    exit_code: int | None = None,
    outputs: dict[str, str] | list[Any] | None = None,  # a list: each instance's (fan-in)
    reason: str | None = None,
    stderr: list[str] | None = None,
    history: dict[str, Any] | None = None,
    allowed_failure: bool = False,
    check_terminal: bool = False,
    expect: StepStatus | None = None,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """Record the step's end. ``expect``: only while the step is in that status (an
    operator's decision, a gate's timeout), else InvalidOperation and nothing written;
    ``decision``: the operator's decision, recorded in the same transition."""
    x = execution
    failed = status in (StepStatus.FAILED, StepStatus.CANCELLED) and not allowed_failure
    if x.masker:
        outputs = x.masker.mask_value(outputs)
        stderr = x.masker.mask_value(stderr)
    skip, children = _before_finish(x, failed)
    fields = {
        "exit_code": exit_code,
        "outputs": outputs,
        "stderr_tail": stderr,
        "reason": reason,
        "allowed_failure": allowed_failure,
        "history": history,
        "expect": expect,
        "decision": decision,
    }
    retval = {
        "run_id": x.run_id,
        "step": x.step_id,
        "status": status.value,
        "reason": reason or "",
        "exit_code": exit_code,
        "outputs": outputs or {},
    }
    link = None if failed or x.inline or x.parent is not None else _chain_link(x, retval)
    sends = _child_messages(x, children) if link is None else None
    outcome = _finish_step(x, status, fields, skip, children, link, sends)
    chainlink.settle(x.task, link, outcome, f"{x.run_id}|{x.step_id}")
    x.sent_by_finish = readychildren.settle(x.task, sends, outcome)
    if outcome.refused is not None and expect is not None:
        raise InvalidOperation(
            f"step {x.step_id!r} of run {x.run_id} is {outcome.refused}, "
            f"not {expect.value.replace('_', ' ')}"
        )
    if outcome.duplicate and check_terminal:
        return x.replay(outcome.run_status or "")
    x.after(outcome, f"recording {status.value}")
    x.after_finish(outcome, skip)
    if failed and x.parent is None:
        raise step_failed(status.value, x.step_id, reason, exit_code, stderr or ())
    return retval


def _child_messages(
    x: StepExecution, children: dict[str, int]
) -> readychildren.PreparedChildren | None:
    """In dynamic dispatch, the children's messages for FINISH to send those it makes
    ready (readychildren.py)."""
    if not children or (x.mode or x.ctx.snapshot.mode) != DYNAMIC:
        return None
    return readychildren.prepare(x.task, x.settings, x.ctx.raw, x.run_id, list(children))


def _chain_link(x: StepExecution, retval: dict[str, Any]) -> chainlink.PreparedLink | None:
    """A chain link's hand-on for FINISH to do (chainlink.py), when this step has one."""
    successors = [Successor(c, n) for c, n in x.children().items()]
    return chainlink.prepare(x.task, x.settings, retval, successors)


def _before_finish(x: StepExecution, failed: bool) -> tuple[list[str], dict[str, int]]:
    """What FINISH is given besides the result: the steps to record skipped, the children
    to join; a canvas run whose steps may run after this failure goes dynamic first."""
    if x.parent is not None:
        return [], {}
    # Both, whatever mode this delivery started in: the store applies the skips
    # (canvas) or the joins (dynamic) by the run's mode at the moment of the
    # transition, so a canvas run failing over while this step ran is joined.
    skip: list[str] = []
    if failed:
        # a canvas will not run what follows a failed step: record it as skipped
        below = x.ctx.graph.descendants(x.step_id)
        skip = [s for s in x.ctx.graph.topological() if s in below]
    children = x.children()
    if failed and x.ctx.hands_off and x.store.run_mode(x.run_id) == CANVAS:
        # steps may run after this failure: dynamic dispatch from here (canvasplan);
        # the FINISH below then joins this step's children
        dispatch.continue_after_failure(x.store, x.run_id, x.settings.lease_seconds)
    return skip, children


def _finish_step(
    x: StepExecution,
    status: StepStatus,
    fields: dict[str, Any],
    skip: list[str],
    children: dict[str, int],
    link: chainlink.PreparedLink | None = None,
    sends: readychildren.PreparedChildren | None = None,
) -> FinishOutcome:
    """The FINISH transition. Redis full: keep the result and the lease, record once
    memory is freed (fullredis)."""
    return wait_while_full(
        lambda: x.store.finish_step(
            x.run_id,
            x.step_id,
            token=x.token,
            status=status,
            workflow=x.ctx.workflow,
            attempt=x.attempt,
            skip=skip,
            children=children,
            watch_seconds=x.watch_seconds,
            link=None if link is None else link.link,
            sends=None if sends is None else sends.messages,
            **fields,
        ),
        f"recording step {x.step_id} of run {x.run_id} as {status.value}",
        while_waiting=x.keep_lease,
        give_up=worker_stopping,
    )


def after(execution: StepExecution, outcome: Outcome | FinishOutcome, what: str) -> None:
    """Publish what a transition let go (a freed slot's parked message); a transition
    refused because another delivery holds the step ends this delivery: it is
    acknowledged, nothing is recorded, and what follows the step is handed on by the
    delivery that holds it."""
    for message in outcome.unparked:
        app.signature(message).apply_async()
    if outcome.superseded:
        log.warning(
            "step %s of run %s (attempt %s): %s refused, another delivery holds the "
            "step; discarded",
            execution.step_id,
            execution.run_id,
            execution.attempt,
            what,
        )
        raise Ignore()


def hand_back(execution: StepExecution, reason: str) -> dict[str, Any]:
    """Give the step back without a result and send its message again (pending again,
    attempt not counted); refused (and discarded) if another delivery holds it."""
    x = execution
    outcome = x.while_full(
        partial(
            x.store.handback_step,
            x.run_id,
            x.step_id,
            token=x.token,
            workflow=x.ctx.workflow,
            attempt=x.attempt or 0,
            reason=reason,
            lease_seconds=x.settings.lease_seconds,
        ),
        "handing back",
    )
    x.after(outcome, "hand-back")
    raise x.task.retry(countdown=0)


def record(execution: StepExecution, result: BashResult, started: str) -> dict[str, Any]:
    """Record what the Bash of this attempt came to."""
    x = execution
    history = {
        "attempt": x.attempt,
        "exit_code": result.exit_code,
        "reason": result.reason,
        "started_at": started,
        "finished_at": now_iso(),
    }
    if fenced(x, result):
        return hand_back(x, "lease_lost")
    if result.reason == HANDBACK:
        return hand_back(x, "shutdown")
    if result.ok:
        return x.finish(StepStatus.SUCCEEDED, exit_code=0, outputs=result.outputs, history=history)
    return _record_failure(x, result, history)


def _record_failure(
    x: StepExecution, result: BashResult, history: dict[str, Any]
) -> dict[str, Any]:
    stderr = result.stderr_tail[-STDERR_TAIL_LINES:]
    if result.message:
        stderr = [*stderr, f"[runbook] {result.message}"][-STDERR_TAIL_LINES:]
    code = result.exit_code
    ended = {"exit_code": code, "stderr": stderr, "history": history}
    reason = result.reason or FailureReason.EXIT_CODE
    if reason == FailureReason.EXIT_CODE and code in x.spec.skip_on_exit_codes:
        # like Airflow's skip_on_exit_code: no retry, recorded skipped
        return x.finish(StepStatus.SKIPPED, reason=FailureReason.EXIT_CODE_SKIP, **ended)
    if reason == FailureReason.CANCELLED:
        if x.store.cancel_reason(x.run_id) != FailureReason.TIMEOUT:
            return x.finish(StepStatus.CANCELLED, reason=reason, **ended)
        reason = FailureReason.TIMEOUT  # the run's timeout, not a person
    delay = policy.retry_delay(x, reason, code)
    if delay is not None:
        return policy.retry(x, code, reason, delay, history)
    if policy.on_failure(x) == "pause" and not x.store.cancel_requested(x.run_id):
        return policy.await_decision(x, code, reason, stderr, history)
    allowed = policy.allowed_failure(x, reason, code)
    return x.finish(StepStatus.FAILED, reason=reason, allowed_failure=allowed, **ended)
