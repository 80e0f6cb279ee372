"""Starting a run: record it, admit it to its concurrency group, publish it; or withdraw it
when it cannot start. Also a rerun's snapshot from an earlier run's."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

import redis
from kombu.exceptions import OperationalError

from ..core.errors import BackendUnavailable, InvalidOperation
from ..core.settings import Settings, get_settings
from ..engine import dispatch
from ..engine.childruns import cancel_tree
from ..engine.step.delivery import finish_outside
from ..plan.compile import make_plan, mode_for_snapshot, snapshot_graph, snapshot_sha256
from ..store import RunStore, redisconn
from ..store.gates import Gates
from ..store.reconnect import Reconnector
from ..store.redisconn import redact


def finish_outside_run(run_id: str, step_id: str, status: Any, **fields: Any) -> None:
    """A parent's step finished from here: a cancel ended its child run (childruns.py)."""
    finish_outside(run_id, step_id, status, **fields)


def start_run(
    snapshot: dict[str, Any],
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """Record and enqueue a run from an already frozen snapshot; its id (submit, rerun)."""

    settings = settings or get_settings()
    store = redisconn.store_for(settings)
    run_id = uuid.uuid4().hex
    graph = snapshot_graph(snapshot)
    plan = make_plan(graph)
    if not graph.needs:  # a rerun with nothing left to do
        raise InvalidOperation("nothing to run: every step would be reused")
    fields = dict(extra or {})
    group = snapshot.get("concurrency")
    if group:
        fields.update(
            cgroup=group["group"],
            cgroup_key=store.keys.cgroup(group["group"]),
            cgroup_limit=str(group["limit"]),
            status="queued",
            # watched when a freed slot admits the run (store.release_group), so a run
            # admitted by a worker that dies before publishing it is sent by the reconciler
            sources=json.dumps(graph.sources()),
            watch_s=str(settings.lease_seconds),
        )
    store.create_run(run_id, snapshot, snapshot_sha256(snapshot), **fields)
    try:
        if group and not _admit(store, run_id, group):
            return run_id
        dispatch.publish_run(snapshot, run_id, plan.tree, graph.sources(), store)
    except InvalidOperation:
        with contextlib.suppress(redis.RedisError):
            store.delete_run(run_id)
        raise
    except redis.ResponseError as exc:  # Redis answered, and said no (e.g. out of memory)
        left = _withdraw(store, run_id, settings)
        raise BackendUnavailable(f"Redis refused the run: {redact(str(exc))}{left}") from None
    except (OperationalError, redis.RedisError, OSError) as exc:
        left = _withdraw(store, run_id, settings)
        raise BackendUnavailable(
            f"broker at {redact(settings.broker_url)} is unreachable: {redact(str(exc))}{left}"
        ) from None
    return run_id


def _withdraw(store: RunStore, run_id: str, settings: Settings) -> str:
    """Remove a recorded run that could not be started; '' once removed, else a warning.

    Its steps are watched from the moment it is published, so a record left behind would
    start the run when Redis answers again, after the caller was told it did not start
    (and perhaps submitted it again). So removing it rides out a blip like a client does
    (``RUNBOOK_CLIENT_RECONNECT_SECONDS``); if Redis stays away, the error says so.
    """
    doing = f"removing run {run_id}, which could not be started"
    try:
        Reconnector(settings.client_reconnect_seconds, doing).call(lambda: store.delete_run(run_id))
        return ""
    except (BackendUnavailable, redis.RedisError):
        return (
            f"; run {run_id} was recorded and could not be removed, so it may still start "
            f"once Redis answers again: check `runbook-celery status {run_id}` before "
            "submitting again"
        )


def start_rerun(
    run_id: str,
    from_failed: bool,
    from_step: str | None,
    settings: Settings,
    by: str | None,
) -> str:
    """Start a new run from an earlier run's snapshot (never today's YAML).

    ``from_failed`` reuses the outputs of the steps that succeeded and runs the failed,
    skipped and cancelled ones; ``from_step`` reruns that step and everything downstream
    (and anything that had not succeeded). The original run is left unchanged. ``by`` is
    recorded as the new run's ``triggered_by``. Returns the new run's id.
    """
    store = redisconn.store_for(settings)
    original = store.get_run(run_id)
    if not original.finished:
        raise InvalidOperation(f"run {run_id} is still {original.status}; wait or cancel it first")
    snapshot = store.snapshot(run_id)
    snapshot.pop("reused", None)
    snapshot.pop("reused_child_runs", None)
    full = snapshot_graph(snapshot)
    if from_step is not None and from_step not in full.needs:
        known = ", ".join(full.order_hint)
        raise InvalidOperation(f"run {run_id} has no step {from_step!r} (steps: {known})")
    not_ok = {sid for sid in full.needs if original.steps[sid].status != "succeeded"}
    if from_step is not None:
        todo = {from_step} | full.descendants(from_step) | not_ok
    elif from_failed:
        todo = set(not_ok)
    else:
        todo = set(full.needs)
    for sid in list(todo):
        todo |= full.descendants(sid)
    reused = {sid: original.steps[sid].outputs for sid in full.needs if sid not in todo}
    if reused:
        snapshot["reused"] = reused
    # a reused uses: step keeps the link to the child run whose outputs it reuses
    children = {sid: original.steps[sid].child_run for sid in reused}
    if any(children.values()):
        snapshot["reused_child_runs"] = {sid: c for sid, c in children.items() if c}
    snapshot["mode"], snapshot["mode_reason"] = mode_for_snapshot(snapshot)
    extra = {"rerun_of": run_id, **({"triggered_by": by} if by else {})}
    return start_run(snapshot, settings=settings, extra=extra)


def _admit(store: RunStore, run_id: str, group: Mapping[str, Any]) -> bool:
    """Concurrency group admission; False when the run must not be published now."""

    verdict, running = Gates(store).admit(
        run_id, group["group"], group["limit"], group["on_conflict"]
    )
    if verdict == "start":
        return True
    if verdict == "skip":
        store.skip_run(run_id, f"concurrency group {group['group']!r} is full")
    elif verdict == "cancel":
        for other in running:  # with their child runs, as Run.cancel
            cancel_tree(
                store,
                other,
                reason=f"superseded by run {run_id}",
                by=None,
                lease_seconds=get_settings().lease_seconds,
                finish=finish_outside_run,
            )
    return False
