"""Stage: fan a ``matrix``/``for_each`` step out into instances, and join them.

The step's own delivery records one instance per combination or item (capped by
``RUNBOOK_MAX_INSTANCES``) and sends the first window of each lane; each instance's end
sends the next of its lane, and the last one joins them all (inline, or as the kept
canvas continuation: ``canvasfanout``).
"""

from __future__ import annotations

import contextlib
import json
from functools import partial
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore

from ...definition import expressions as ex
from ...definition import matrix
from ...store.events import TERMINAL_RUN_STATUSES, FailureReason, StepStatus
from .. import dispatch
from ..canvasfanout import continuation, send_join
from ..fullredis import wait_while_full, worker_stopping
from ..taskevents import FannedOut, StepFailed
from .condition import outputs_of

if TYPE_CHECKING:
    from .delivery import StepExecution


def fan_out(execution: StepExecution, need_outputs: dict[str, Any]) -> dict[str, Any]:
    """Record one instance per matrix combination / list item and send the first ones."""
    x = execution
    values = instance_values(x, need_outputs)
    if isinstance(values, dict):  # the step failed: too many instances, or not a list
        return values
    if not values:
        return x.finish(StepStatus.SUCCEEDED, exit_code=0, outputs=[])
    window = dispatch.fan_out_window(x.spec.max_parallel, len(values))
    _keep_continuation(x)
    # the first window is watched from the transition that records it (recovery.py)
    ids = x.while_full(
        partial(
            x.store.add_instances,
            x.run_id,
            x.step_id,
            values,
            window,
            watch_seconds=x.watch_seconds,
        ),
        "recording the instances of",
    )
    outcome = x.while_full(
        partial(x.store.release_step, x.run_id, x.step_id, x.token, x.attempt or 0),
        "releasing",
    )
    x.after(outcome, "fan-out")
    x.stop_keeping()  # released: the instances hold their own leases
    if x.store.cancel_requested(x.run_id):
        # cancelled while we fanned out: cancel the new instances too, send none
        reason = x.store.cancel_reason(x.run_id) or FailureReason.CANCELLED
        x.store.cancel_run(x.run_id, reason=reason, keep=list(x.ctx.survivors))
    else:
        dispatch.publish_fan_out(x.ctx.raw, x.run_id, ids[:window])
    result = {"run_id": x.run_id, "step": x.step_id, "status": "fanned_out", "instances": len(ids)}
    if x.in_canvas:
        # the join continues the canvas (canvasfanout): store this task's result as
        # Celery would (as in dynamic mode), hand on, and keep Celery from continuing
        request = x.task.request
        task_id = request.id or f"{x.run_id}.{x.step_id}"
        x.task.backend.store_result(task_id, result, "SUCCESS", request=request)
        x.store.hand_on(x.run_id, x.step_id, [], x.settings.lease_seconds)
        raise FannedOut(repr(result))
    return result


def _keep_continuation(x: StepExecution) -> None:
    """Before any instance exists: keep the join that takes this step's canvas place."""
    if x.in_canvas:
        message = continuation(x.task.request, x.ctx.raw, x.run_id, x.step_id)
        x.while_full(
            partial(x.store.keep_continuation, x.run_id, x.step_id, message),
            "keeping the join of",
        )


def instance_values(
    execution: StepExecution, need_outputs: dict[str, Any]
) -> list[dict[str, Any]] | dict[str, Any]:
    """Each instance's values, or the failed step's result when there can be none.

    The instance cap (RUNBOOK_MAX_INSTANCES) is checked before anything is built or
    recorded: 100,000 items once took a pool process 500 MB and Redis 147 MB.
    """
    x = execution
    cap = x.settings.max_instances
    if x.spec.matrix:
        try:
            combos = matrix.expand(x.spec.matrix, cap)
        except matrix.TooManyCombinations as exc:
            return _too_many(x, str(exc), cap)
        return [{"matrix": combo} for combo in combos]
    occ = ex.find(x.spec.for_each or "")[0]
    raw = ex.evaluate(occ.node, x.resolver(need_outputs))
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        items = None
    if not isinstance(items, list):
        return x.finish(
            StepStatus.FAILED,
            reason="bad_input",
            stderr=[
                f"[runbook] for_each: {x.spec.for_each} is not a JSON list: {str(raw)[:200]!r}"
            ],
        )
    if len(items) > cap:
        return _too_many(x, f"for_each list has {len(items):,} items", cap)
    return [{"item": item} for item in items]


def _too_many(x: StepExecution, what: str, cap: int) -> dict[str, Any]:
    return x.finish(
        StepStatus.FAILED,
        reason=FailureReason.TOO_MANY_INSTANCES,
        stderr=[
            f"[runbook] {what}: more than the {cap:,} instances a step may have "
            "(RUNBOOK_MAX_INSTANCES); split the work or raise the limit"
        ],
    )


def instance_ended(execution: StepExecution) -> None:
    """This instance has ended: send the next of its lane; the last one joins them all.

    The join runs here rather than as a message, which would wait behind every
    instance message still queued (after a cancel, up to a window of them). What
    becomes due is watched in the same transition (``RunStore.instance_ended``); the
    parent hands on with this task when its join is recorded here (handon).
    """
    x = execution
    nxt, join = wait_while_full(
        lambda: x.store.instance_ended(x.run_id, x.step_id, x.watch_seconds),
        f"handing on from instance {x.step_id} of run {x.run_id}",
        give_up=worker_stopping,
    )
    if nxt:
        dispatch.publish_steps(x.ctx.raw, x.run_id, [nxt])
    if not join or x.parent is None:
        return
    message = x.store.continuation(x.run_id, x.parent)
    if message:
        # a canvas run: the join is the task that continues it (canvasfanout); the
        # parent stays watched (INSTANCE_ENDED) until that task hands it on
        send_join(message, x.ctx.raw, x.run_id, x.parent)
        return
    parent = x.sibling(x.parent)
    parent.inline = True  # this task hands on for it
    # The parent's failure is not this instance's; a join refused because another
    # delivery holds the parent (Ignore) is left to the parent's watch, and this
    # instance still hands on.
    try:
        with contextlib.suppress(StepFailed, Ignore):
            parent.join_instances()
    finally:
        x.joined = parent if parent.recorded else None


def join_instances(execution: StepExecution) -> dict[str, Any]:
    """All instances ended: the step succeeds if they all did (or were allowed to fail)."""
    x = execution
    raw = x.store.step_hashes(x.run_id, [x.step_id])[x.step_id]
    if raw.get("status") in TERMINAL_RUN_STATUSES:
        # joined already (or cancelled with its instances): a duplicate join reads none
        # of the instances, which may be thousands
        return x.replay(raw["status"])
    ids = json.loads(raw.get("instances") or "[]")
    hashes = x.store.step_hashes(x.run_id, ids)
    outputs = [outputs_of(hashes[i]) for i in ids]
    failed = [
        i
        for i in ids
        if hashes[i].get("status") not in ("succeeded", "skipped")
        and hashes[i].get("allowed_failure") != "1"
    ]
    if failed and x.store.cancel_requested(x.run_id):
        return x.finish(
            StepStatus.CANCELLED,
            outputs=outputs,
            reason=x.store.cancel_reason(x.run_id) or FailureReason.CANCELLED,
            stderr=[f"[runbook] run cancelled; instances not succeeded: {len(failed)}"],
        )
    if failed:
        more = f" and {len(failed) - 20} more" if len(failed) > 20 else ""
        return x.finish(
            StepStatus.FAILED,
            outputs=outputs,
            reason="instance_failed",
            stderr=[f"[runbook] instances not succeeded: {', '.join(failed[:20])}{more}"],
            allowed_failure=x.spec.continue_on_error is True,
        )
    return x.finish(StepStatus.SUCCEEDED, outputs=outputs)
