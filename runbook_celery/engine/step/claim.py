"""Stage: claim the step in the store, or say why this delivery does not start it.

One CLAIM transition decides: start (this delivery holds the lease), done (a duplicate of
a finished step: replay), busy (another delivery holds it: retry later), parked (a gate
said "not now": acknowledged, published again when it opens), blocked, cancelled or
exhausted (recorded here), unknown (dropped).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from ...definition import expressions as ex
from ...plan.snapshot import ApprovalGate
from ...store.events import FailureReason, StepStatus
from ..app import APPROVAL_TIMEOUT_TASK, app
from ..fullredis import wait_while_full, worker_stopping
from ..lease import boottime
from ..taskevents import Parked

if TYPE_CHECKING:
    from .delivery import StepExecution

log = logging.getLogger("runbook_celery.worker")
# What a parked step waits for, as Flower shows it ("waiting: ...")
_WAITING = {
    "approval": "an approval",
    "paused": "the run to be resumed",
    "max_active_steps": "a free slot (max_active_steps)",
}


def start(execution: StepExecution, check_needs: bool, ignore_cancel: bool) -> Any:
    """Claim the step. When a gate says "not now", claim again with this delivery's
    message: the store parks it in that same transition (or starts the step, if the
    gate opened meanwhile), so a step is never left unclaimed and unparked. While
    Redis is full, each claim waits until memory is freed (fullredis)."""
    x = execution
    approval = x.spec.approval if x.parent is None else None
    park_message: dict[str, Any] | None = None
    while True:
        decision = wait_while_full(
            partial(claim, x, check_needs, ignore_cancel, park_message, approval),
            f"claiming step {x.step_id} of run {x.run_id}",
            give_up=worker_stopping,
        )
        if decision.action != "park" or park_message is not None:
            break  # (a claim given the message never answers "park")
        park_message = dict(x.task.signature_from_request())
    if (
        decision.action == "parked"
        and decision.status == "approval"
        and approval
        and approval.timeout
    ):
        timeout = app.signature(APPROVAL_TIMEOUT_TASK, args=(x.run_id, x.step_id), immutable=True)
        timeout.apply_async(countdown=approval.timeout, root_id=x.run_id)
    return decision


def claim(
    execution: StepExecution,
    check_needs: bool,
    ignore_cancel: bool,
    park_message: dict[str, Any] | None,
    approval: ApprovalGate | None,
) -> Any:
    """One CLAIM transition. Its send time starts the lease on this side (LeaseKeeper):
    a claim retried while Redis was full counts from the retry that went through."""
    x = execution
    x.claim_sent = boottime()
    return x.store.start_step(
        x.run_id,
        x.step_id,
        token=x.token,
        needs=list(x.spec.needs) if x.parent is None else [],
        output_steps=referenced_steps(x),
        workflow=x.ctx.workflow,
        lease_seconds=x.settings.lease_seconds,
        max_attempts=x.settings.max_attempts,
        check_needs=check_needs,
        ignore_cancel=ignore_cancel,
        needs_approval=approval is not None,
        max_active=x.max_active,
        park_message=park_message,
        approval_prompt=approval.prompt if approval else "",
    )


def not_started(execution: StepExecution, decision: Any) -> dict[str, Any]:
    """The claim did not start the step: finish, hand on, or drop this delivery."""
    x = execution
    if decision.action == "done":
        return x.replay(decision.status or "")
    if decision.action == "unknown":
        log.warning(
            "dropped a message for step %r of run %s: no such step in the record",
            x.step_id,
            x.run_id,
        )
        return {"run_id": x.run_id, "step": x.step_id, "status": "unknown"}
    if decision.action == "busy":
        # another delivery holds the lease; come back when it may have expired
        raise x.task.retry(countdown=max(1, x.settings.lease_seconds // 2))
    if decision.action == "parked":  # acknowledged; published again when the gate opens
        raise Parked(_WAITING.get(decision.status or "", decision.status or "a gate"))
    if decision.action == "blocked":
        return x.finish(StepStatus.SKIPPED, reason=f"needs {decision.blocked_by} {decision.status}")
    if decision.action == "cancelled":
        return x.finish(StepStatus.CANCELLED, reason=decision.status or "cancelled")
    if decision.action == "exhausted":
        x.attempt = decision.attempt
        return x.finish(
            StepStatus.FAILED,
            reason=FailureReason.WORKER_LOST,
            stderr=[
                f"[runbook] gave up after {decision.status} deliveries: the worker "
                "running this step was lost each time"
            ],
        )
    raise RuntimeError(f"unexpected claim decision {decision.action!r}")


def referenced_steps(execution: StepExecution) -> list[str]:
    """Steps whose outputs this step's expressions read (needs, direct or transitive)."""
    spec = execution.spec
    wanted: list[str] = []
    sources = list(spec.vars.values())
    with_ = [v for v in spec.with_.values() if isinstance(v, str)]
    for template in [*spec.env.values(), *with_]:
        sources += [o.source for o in ex.find(template)]
    if spec.for_each and execution.parent is None:
        sources += [o.source for o in ex.find(spec.for_each)]
    for source in sources:
        for ref in ex.refs(ex.parse(source)):
            if ref.kind in ("outputs", "all_outputs") and ref.name not in wanted:
                wanted.append(ref.name)
            elif ref.kind == "needs":  # GitHub's needs context: every direct need's outputs
                wanted += [n for n in spec.needs if n not in wanted]
    return wanted
