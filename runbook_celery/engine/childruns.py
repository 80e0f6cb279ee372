"""Child runs of ``uses:`` steps: started by the step's task, waited for with no worker held,
and handed back to the parent's step when they end.

The life of a using step:

1. Its task claims it as any step, evaluates ``with:`` (values, never code), builds the
   child's snapshot from the parent's frozen bundle (``subworkflow``) and records the child
   under a derived id (``subworkflow.child_run_id``) only if no run has that id yet, then
   publishes it. A worker that dies anywhere in here leaves the step to its lease: the next
   delivery finds the same child, publishes it again if it never started, and goes on.
2. AWAIT_CHILD (``store/lua/await_child.lua``) ends the delivery without ending the step:
   no lease, no watch, no slot; the step stays ``running`` with its ``child_run``. If the
   child has already ended, nothing is parked and the delivery finishes the step itself.
3. When the child run ends (the transition that ends it: FINISH, or a cancel),
   ``hand_to_parent`` finishes the parent's step from outside, as an operator's decision
   does (``step.delivery.finish_outside``: FINISH, then its dependants are published). A delivery of
   the child's last step that died before this hands on again when it is redelivered
   (``handon.replay``), and it does nothing if the step is not waiting (yet): the step's own
   AWAIT_CHILD then sees the child ended. Under both, the reconciler's ``sweep_waiting``
   finishes a step still waiting a lease after its child ended (``P:children_waiting``).

Cancel and pause go down the tree: ``cancel_tree`` and ``RunControl.pause/resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore
from redis.typing import EncodableT

from ..core.errors import InvalidDefinition, InvalidParams, Problem, RunNotFound
from ..definition import expressions as ex
from ..definition.loader import load_workflow_text
from ..definition.subworkflow import MAX_DEPTH, Frozen, child_ids, child_run_id
from ..plan.compile import (
    build_snapshot,
    cancel_survivors,
    make_plan,
    snapshot_graph,
    snapshot_sha256,
)
from ..store import Outcome, RunStore, now_iso
from ..store.codec import _s
from ..store.events import TERMINAL_RUN_STATUSES, FailureReason, RunStatus, StepStatus
from ..store.gates import Gates
from ..store.scripts import register
from .app import app
from .dispatch import continue_survivors, publish_admitted, publish_run
from .taskevents import Parked

if TYPE_CHECKING:
    from .step.delivery import StepExecution

log = logging.getLogger("runbook_celery.worker")

Finish = Callable[..., None]  # step.delivery.finish_outside(run_id, step_id, status, **fields)


def evaluate_with(given: Mapping[str, Any], resolve: Callable[[ex.Ref], Any]) -> dict[str, Any]:
    """``with:`` values for the child's params: text with ``${{ }}`` filled in as data."""
    return {k: ex.substitute(v, resolve) if isinstance(v, str) else v for k, v in given.items()}


def child_snapshot(
    parent: Mapping[str, Any], parent_run: str, spec: Mapping[str, Any], params: Mapping[str, Any]
) -> dict[str, Any]:
    """The child's snapshot, built from what the parent's trigger froze (never from disk).

    Raises InvalidParams (``with:`` values that do not fit) or InvalidDefinition."""
    depth = int((parent.get("parent") or {}).get("depth", 0)) + 1
    if depth > MAX_DEPTH:  # refused at validation; here for a snapshot made some other way
        where = str(parent.get("file", ""))
        raise InvalidDefinition([Problem(where, None, f"uses: nests deeper than {MAX_DEPTH}")])
    frozen = Frozen(parent["subworkflows"], spec["uses"])
    entry = frozen.entry
    loaded = load_workflow_text(entry["yaml"], file=entry["file"], base_dir=Path(entry["base_dir"]))
    snapshot = build_snapshot(loaded, params, frozen=frozen)
    snapshot["concurrency"] = None  # the parent was admitted; its child runs within it
    snapshot["parent"] = {"run": parent_run, "step": spec["id"], "depth": depth}
    return snapshot


# ---------------------------------------------------------------------------- the parent's step


def start_child(execution: StepExecution, need_outputs: dict[str, Any]) -> dict[str, Any]:
    """Run the step's child (recording it once) and wait for it without holding a worker."""
    store, spec, run_id = execution.store, execution.spec, execution.run_id
    child_id = child_run_id(run_id, execution.step_id)
    status = store.run_status(child_id)
    if status is None:
        try:
            params = evaluate_with(spec.with_, execution.resolver(need_outputs))
            snapshot = child_snapshot(execution.ctx.raw, run_id, spec.raw, params)
        except (InvalidParams, InvalidDefinition) as exc:
            return execution.finish(
                StepStatus.FAILED,
                reason=FailureReason.BAD_INPUT,
                stderr=[f"[runbook] uses {spec.uses}: {exc}"[:2000]],
                allowed_failure=spec.continue_on_error is True,
            )
        created = store.create_run_once(
            child_id,
            snapshot,
            snapshot_sha256(snapshot),
            parent_run=run_id,
            parent_step=execution.step_id,
        )
        if created:  # else another delivery recorded it, and publishes it
            _start(execution, child_id, snapshot)
    elif status == RunStatus.PENDING:  # recorded by a delivery that died before publishing
        _publish(store, child_id, store.snapshot(child_id))
    return _park(execution, child_id)


def _start(execution: StepExecution, child_id: str, snapshot: Mapping[str, Any]) -> None:
    """Publish a new child; one recorded while its parent is paused starts paused, and one
    recorded while its parent is cancelling is cancelled (unless its step is cleanup that
    runs after a cancel: ``always()``/``cancelled()``)."""
    store, parent_run = execution.store, execution.run_id
    if store.r.hget(store.keys.run(parent_run), "paused") in (b"1", "1"):
        Gates(store).pause(child_id, f"run {parent_run}")
    _publish(store, child_id, snapshot)
    if store.cancel_requested(parent_run) and execution.step_id not in execution.ctx.survivors:
        reason = store.cancel_reason(parent_run) or FailureReason.CANCELLED
        lease = execution.settings.lease_seconds
        cancel_tree(store, child_id, reason=reason, by=None, lease_seconds=lease, finish=_held)


def _held(*_: Any, **__: Any) -> None:
    """``finish`` for a child cancelled by the delivery that holds its parent's step: that
    step is not waiting yet (``hand_to_parent`` does nothing); its AWAIT_CHILD sees the end."""


def _publish(store: RunStore, child_id: str, snapshot: Mapping[str, Any]) -> None:
    graph = snapshot_graph(snapshot)
    publish_run(snapshot, child_id, make_plan(graph).tree, graph.sources(), store)


def await_child(
    store: RunStore,
    run_id: str,
    step_id: str,
    *,
    token: str,
    attempt: int,
    workflow: str,
    child_id: str,
) -> tuple[int, str]:
    """AWAIT_CHILD (``await_child.lua``): (1, parked message a freed slot lets go, or ''),
    (0, the child's final status or 'gone'): not parked, or (-1, ''): refused."""
    script = register(store.r, "await_child")
    k = store.keys
    keys = [*k.transition(run_id, step_id), k.run(child_id), k.children_waiting]
    # no message is kept: the child's end hands on (runs with uses: are dynamic)
    args: list[EncodableT] = [
        run_id, step_id, token, now_iso(), workflow, "", attempt, child_id, time.time(),
    ]  # fmt: skip
    reply = [_s(x) for x in script(keys=keys, args=args)]
    return int(reply[0]), str(reply[1]) if len(reply) > 1 else ""


def _park(execution: StepExecution, child_id: str) -> dict[str, Any]:
    code, text = execution.while_full(
        partial(
            await_child,
            execution.store,
            execution.run_id,
            execution.step_id,
            token=execution.token,
            attempt=execution.attempt or 0,
            workflow=execution.ctx.workflow,
            child_id=child_id,
        ),
        "parking",
    )
    if code < 0:
        execution.after(Outcome(False, superseded=True), "wait for its child run")
    if code > 0:
        execution.stop_keeping()
        if text:
            app.signature(json.loads(text)).apply_async()
        raise Parked(f"child run {child_id}")
    status, fields = child_result(execution.store, execution.run_id, child_id, execution.spec.raw)
    return execution.finish(status, **fields)


def child_result(
    store: RunStore, parent_run: str, child_id: str, spec: Mapping[str, Any]
) -> tuple[StepStatus, dict[str, Any]]:
    """The parent step's end from its ended child: its status, and its workflow outputs.

    A child cancelled with its parent makes the step cancelled; one cancelled on its own
    (someone cancelled the child run) fails the step, as GitHub fails a job whose called
    workflow was cancelled, so the parent does not end as if it had succeeded."""
    try:
        record = store.get_run(child_id)
    except RunNotFound:
        return StepStatus.FAILED, {
            "reason": FailureReason.CHILD_FAILED,
            "stderr": [f"[runbook] child run {child_id} no longer exists (expired or deleted)"],
            "allowed_failure": spec.get("continue_on_error") is True,
        }
    if record.status == RunStatus.SUCCEEDED:
        return StepStatus.SUCCEEDED, {"outputs": dict(record.outputs)}
    if record.status == RunStatus.CANCELLED and store.cancel_requested(parent_run):
        return StepStatus.CANCELLED, {
            "reason": FailureReason.CANCELLED,
            "stderr": [f"[runbook] child run {child_id} was cancelled"],
        }
    stderr = [f"[runbook] child run {child_id} {record.status}"]
    for sid, step in record.steps.items():
        if step.status in ("failed", "cancelled") and not step.allowed_failure:
            stderr.append(f"[runbook] {sid}: {step.status} ({step.reason or '-'})")
            stderr += step.stderr_tail[-5:]
    return StepStatus.FAILED, {
        "reason": FailureReason.CHILD_FAILED,
        "stderr": stderr[-20:],
        "allowed_failure": spec.get("continue_on_error") is True,
    }


# ---------------------------------------------------------------------------- the child's end


def hand_to_parent(
    store: RunStore, run_id: str, snapshot: Mapping[str, Any], finish: Finish
) -> None:
    """A child run has ended: finish its parent's waiting step (idempotent).

    Does nothing when the step is not waiting for this child: not parked yet (its
    delivery's AWAIT_CHILD will see the child ended), or finished already."""
    parent = snapshot.get("parent")
    if not parent:
        return
    parent_run, step_id = parent["run"], parent["step"]
    try:
        h = store.step_hashes(parent_run, [step_id])[step_id]
        spec = next(s for s in store.snapshot(parent_run)["steps"] if s["id"] == step_id)
    except RunNotFound:
        h, spec = {}, {}
    if h.get("status") != StepStatus.RUNNING or h.get("child_run") != run_id or h.get("holder"):
        if not h or StepStatus(h.get("status") or "pending").terminal:
            store.r.zrem(store.keys.children_waiting, f"{parent_run}|{step_id}")
        return
    status, fields = child_result(store, parent_run, run_id, spec)
    with contextlib.suppress(Ignore):  # another delivery took the step over meanwhile
        finish(parent_run, step_id, status, **fields)
    store.r.zrem(store.keys.children_waiting, f"{parent_run}|{step_id}")


def sweep_waiting(store: RunStore, finish: Finish, older_than: float) -> int:
    """The reconciler's net under the hand-off: a step waiting longer than ``older_than``
    seconds for a child run that has ended (its hand-off lost with a worker, a client that
    cancelled, or Redis) is finished now. Returns how many were."""
    k = store.keys
    members = store.r.zrangebyscore(k.children_waiting, 0, time.time() - older_than)
    done = 0
    for member in (_s(m) for m in members):
        parent_run, _, step_id = str(member).partition("|")
        h = store.step_hashes(parent_run, [step_id])[step_id]
        child = h.get("child_run")
        if not h or not child or StepStatus(h.get("status") or "pending").terminal:
            store.r.zrem(k.children_waiting, member)
            continue
        if h.get("holder") or not _ended_before(store, child, time.time() - older_than):
            continue  # a delivery holds it, or the child is going (or its hand-off may be)
        log.warning("child run %s ended without handing on to %s: handing on", child, parent_run)
        hand_to_parent(store, child, {"parent": {"run": parent_run, "step": step_id}}, finish)
        done += 1
    return done


def _ended_before(store: RunStore, run_id: str, when: float) -> bool:
    """Whether the run ended before ``when`` (epoch seconds), or no longer exists."""
    status, finished = store.r.hmget(store.keys.run(run_id), ["status", "finished_at"])
    if status is None:
        return True
    if finished is None:
        return False
    text = finished.decode() if isinstance(finished, bytes) else str(finished)
    return datetime.fromisoformat(text).timestamp() < when


def after_replay(store: RunStore, run_id: str, snapshot: Mapping[str, Any], finish: Finish) -> None:
    """A step of a child run delivered again after it finished: if the run has ended, its
    hand-off may have died with the worker that ended it; do it again."""
    if snapshot.get("parent") and store.run_status(run_id) in TERMINAL_RUN_STATUSES:
        hand_to_parent(store, run_id, snapshot, finish)


# ---------------------------------------------------------------------------- down the tree


def live_children(store: RunStore, run_id: str, *, cancelling: bool = False) -> list[str]:
    """The child runs of ``run_id`` that exist and have not ended; ``cancelling``: not
    those of steps that run after a cancel (``always()``/``cancelled()`` cleanup)."""
    try:
        snapshot = store.snapshot(run_id)
    except RunNotFound:
        return []
    keep = set(cancel_survivors(snapshot)) if cancelling else set()
    ids = [c for sid, c in child_ids(snapshot, run_id).items() if sid not in keep]
    return [c for c in ids if store.run_status(c) not in (None, *TERMINAL_RUN_STATUSES)]


def cancel_tree(
    store: RunStore,
    run_id: str,
    *,
    reason: str,
    by: str | None,
    lease_seconds: float,
    finish: Finish,
) -> None:
    """Cancel a run (as ``Run.cancel`` always has) and, below it, its child runs."""
    snapshot = store.snapshot(run_id)
    keep = cancel_survivors(snapshot)
    _, final = store.cancel_run(run_id, reason=reason, keep=keep, by=by)
    admitted = list(store.last_admitted)
    if keep:
        continue_survivors(store, run_id, lease_seconds)
    if admitted:
        publish_admitted(store, admitted)
    after_cancel(
        store,
        run_id,
        snapshot,
        final,
        reason=reason,
        by=by,
        lease_seconds=lease_seconds,
        finish=finish,
    )


def after_cancel(
    store: RunStore,
    run_id: str,
    snapshot: Mapping[str, Any],
    final: str | None,
    *,
    reason: str,
    by: str | None,
    lease_seconds: float,
    finish: Finish,
) -> None:
    """What a cancel of ``run_id`` owes the tree: its child runs are cancelled too (their
    end then ends the waiting steps), and if the cancel ended the run itself, its parent's
    step is handed on (nothing else would: no step of it finishes after this)."""
    for child in live_children(store, run_id, cancelling=True):
        with contextlib.suppress(RunNotFound):
            cancel_tree(
                store, child, reason=reason, by=by, lease_seconds=lease_seconds, finish=finish
            )
    if final:
        hand_to_parent(store, run_id, snapshot, finish)
