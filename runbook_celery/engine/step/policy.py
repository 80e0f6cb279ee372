"""Stage: what a failed attempt comes to by the step's policy.

``retries`` (a countdown retry, the attempt counted), ``on_failure: pause`` (parked for an
operator's decision: retry, skip or abort) and ``continue_on_error`` (a failure that does
not fail the run). Deciding (``retry_delay``, ``allowed_failure``) reads only the spec,
the attempt and the run's cancel flag, so it is tested without a worker.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from ...store.events import FailureReason
from ...store.gates import Gates
from ..taskevents import Parked

if TYPE_CHECKING:
    from .delivery import StepExecution

RETRYABLE = (FailureReason.EXIT_CODE, FailureReason.TIMEOUT)


def retry_delay(execution: StepExecution, reason: str, exit_code: int | None) -> float | None:
    """Seconds until the next attempt, or None when this failure is final."""
    x = execution
    policy = x.spec.retries
    attempt = x.attempt or 1
    if policy is None or reason not in RETRYABLE or attempt > policy.limit:
        return None
    if policy.on_exit_codes is not None and exit_code not in policy.on_exit_codes:
        return None
    if x.store.cancel_requested(x.run_id):
        return None
    return policy.delay_before(attempt)


def allowed_failure(execution: StepExecution, reason: str, exit_code: int | None) -> bool:
    """``continue_on_error``: true for any failure, or a list of the exit codes that may
    fail (Dagu's continueOn.exitCode): a timeout or a lost worker is no such exit."""
    allowed = execution.spec.continue_on_error
    if isinstance(allowed, tuple):
        return reason == FailureReason.EXIT_CODE and exit_code in allowed
    return bool(allowed)


def on_failure(execution: StepExecution) -> str | None:
    """``on_failure`` of the step (an instance of a fanned-out step never pauses)."""
    return execution.spec.on_failure if execution.parent is None else None


def retry(
    execution: StepExecution,
    exit_code: int | None,
    reason: str,
    delay: float,
    history: dict[str, Any],
) -> dict[str, Any]:
    """Record the failed attempt (RETRY) and send the message again after ``delay``."""
    x = execution
    outcome = x.while_full(
        partial(
            x.store.retry_step,
            x.run_id,
            x.step_id,
            token=x.token,
            workflow=x.ctx.workflow,
            attempt=x.attempt or 1,
            exit_code=exit_code,
            reason=reason,
            delay=delay,
            history=history,
            lease_seconds=x.settings.lease_seconds,
        ),
        "recording a retry of",
    )
    x.after(outcome, "retry")
    raise x.task.retry(countdown=delay)


def await_decision(
    execution: StepExecution,
    exit_code: int | None,
    reason: str,
    stderr: list[str],
    history: dict[str, Any],
) -> dict[str, Any]:
    """Park the failed step until an operator decides (``on_failure: pause``)."""
    x = execution
    outcome = x.while_full(
        partial(
            Gates(x.store).await_decision,
            x.run_id,
            x.step_id,
            token=x.token,
            workflow=x.ctx.workflow,
            signature=dict(x.task.signature_from_request()),
            exit_code=exit_code,
            reason=reason,
            stderr=x.masker.mask_value(stderr),
            history=history,
            attempt=x.attempt or 1,
        ),
        "parking for a decision",
    )
    x.after(outcome, "wait for a decision")
    raise Parked("a decision (retry, skip or abort)")
