"""Finding steps whose message was lost, and putting them back (the lease reconciler's pass).

A step is watched in the lease index (``run|step`` scored by a deadline, Redis' clock)
for as long as something must still happen to it through a Celery message:

* from the moment it becomes ready: the source steps of a run when the run is published
  (``dispatch.publish_run``), a successor when the step before it hands on
  (``RunStore.hand_on``), a step published by a fail-over, a parked step a freed slot
  lets go;
* while a worker holds its message (``workerhooks``: received, reserved, scheduled);
* while it runs (its lease), and through its retries and hand-backs;
* until its task has handed on what follows it (``RunStore.hand_on``).

Every holder renews the entry. An entry that runs out means nobody is doing anything
about the step: its worker died, or the broker or a worker lost its message (kombu's
Redis transport pops a message and records it as unacknowledged in two separate round
trips; a worker killed in between loses it, and one killed before its first watch
leaves it unacknowledged and unwatched). The pass then looks where the message is:
unacknowledged → put back on its queue; queued → watched again; nowhere → the step is
published again (a canvas run fails over to dynamic dispatch). The entry stays (renewed)
until the step hands on, so a message lost again is found again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from ..core.errors import RunNotFound
from ..core.settings import get_settings
from ..plan.compile import snapshot_graph
from ..store import RunStore, _s
from ..store.events import TERMINAL_RUN_STATUSES, StepStatus
from ..store.scripts import register
from . import dispatch
from .brokerlayout import BrokerLayout, broker_layout
from .canvasfanout import send_join

# an unacknowledged message in kombu's layout: (delivery tag, payload, list to restore it to)
Unacked = tuple[str, dict[str, Any], str]

log = logging.getLogger("runbook_celery.worker")

TERMINAL_STEP_STATUSES = frozenset(s.value for s in StepStatus if s.terminal)
PARKED = frozenset({"waiting", "awaiting_approval", "awaiting_decision"})


@dataclass
class Watched:
    """One expired entry, with what the record and the broker say about its step."""

    run_id: str
    step_id: str
    status: str | None
    run_status: str | None
    lease_alive: bool
    fanned_out: bool

    @property
    def member(self) -> str:
        return f"{self.run_id}|{self.step_id}"

    @property
    def task_id(self) -> str:
        suffix = ".join" if self.fanned_out else ""
        return f"{self.run_id}.{self.step_id}{suffix}"


def restore_unacked(broker: redis.Redis, task_id: str, layout: BrokerLayout | None = None) -> bool:
    """Put the unacknowledged message of ``task_id`` back on its queue (kombu's layout)."""
    layout = layout or broker_layout()
    found = _unacked(broker, {task_id}, layout)
    return bool(found) and _restore(broker, *found[task_id], layout)


def _unacked(
    broker: redis.Redis, task_ids: set[str], layout: BrokerLayout | None = None
) -> dict[str, Unacked]:
    """Unacknowledged messages of ``task_ids``: task id -> (delivery tag, payload, list)."""
    layout = layout or broker_layout()
    out: dict[str, Unacked] = {}
    if not task_ids:
        return out
    for tag, raw in broker.hscan_iter(layout.unacked, count=500):
        try:
            payload, _exchange, routing_key = json.loads(raw)
            task_id = payload.get("headers", {}).get("id")
            queue = layout.message_queue_key(payload, routing_key)
        except (ValueError, TypeError, AttributeError):
            continue
        if task_id in task_ids and task_id not in out:
            out[task_id] = (_s(tag), payload, queue)
    return out


def _restore(
    broker: redis.Redis,
    tag: str,
    payload: dict[str, Any],
    queue: str,
    layout: BrokerLayout | None = None,
) -> bool:
    layout = layout or broker_layout()
    payload.setdefault("headers", {})["redelivered"] = True
    script = register(broker, "restore")  # store/lua/restore.lua
    keys = [layout.unacked, layout.unacked_index, queue]
    return bool(script(keys=keys, args=[tag, json.dumps(payload)]))


def queued(
    broker: redis.Redis, queue: str, task_ids: Iterable[str], layout: BrokerLayout | None = None
) -> set[str]:
    """Which of ``task_ids`` wait in ``queue`` (at any priority)."""
    ids = list(task_ids)
    if not ids:
        return set()
    keys = (layout or broker_layout()).queue_keys(queue)
    script = register(broker, "queued")  # store/lua/queued.lua
    return {_s(x) for x in script(keys=keys, args=ids)}


def message_queued(
    broker: redis.Redis, queue: str, task_id: str, layout: BrokerLayout | None = None
) -> bool:
    """Whether a message for ``task_id`` waits in ``queue`` (at any priority)."""
    return task_id in queued(broker, queue, [task_id], layout)


def recover_once(
    store: RunStore,
    broker: redis.Redis | None,
    lock_seconds: int,
    layout: BrokerLayout | None = None,
) -> list[str]:
    """One pass over the expired watches; returns the ``run|step`` entries dealt with.

    ``layout``: where kombu keeps messages on ``broker`` (default: our app's).
    """
    cutoff = store.server_time()
    expired = store.expired_leases(before=cutoff)
    mine = _claim(store, expired, lock_seconds)
    if not mine:
        return []
    views = _look(store, mine)
    if broker is None:
        for v in views:
            _act_without_broker(store, v, cutoff)
        return [v.member for v in views]
    layout = layout or broker_layout()
    unacked = _unacked(broker, {v.task_id for v in views}, layout)
    waiting = [v for v in views if v.task_id not in unacked and _may_be_queued(v)]
    found: set[str] = set()
    for queue, group in _by_queue(store, waiting).items():
        found |= queued(broker, queue, [v.task_id for v in group], layout)
    for v in views:
        _act(store, broker, layout, v, unacked.get(v.task_id), v.task_id in found, cutoff)
    return [v.member for v in views]


def _claim(store: RunStore, expired: list[tuple[str, str]], seconds: int) -> list[tuple[str, str]]:
    """Entries this worker deals with (one worker per entry and pass, by a Redis lock)."""
    if not expired:
        return []
    pipe = store.r.pipeline(transaction=False)
    for run_id, step_id in expired:
        pipe.set(
            f"{store.keys.prefix}:recover:{run_id}|{step_id}", os.getpid(), nx=True, ex=seconds
        )
    return [e for e, won in zip(expired, pipe.execute(), strict=True) if won]


def _look(store: RunStore, entries: list[tuple[str, str]]) -> list[Watched]:
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    for run_id, step_id in entries:
        pipe.hmget(k.step(run_id, step_id), "status", "instances")
        pipe.hget(k.run(run_id), "status")
        pipe.exists(k.lease(run_id, step_id))
    res = pipe.execute()
    out = []
    for i, (run_id, step_id) in enumerate(entries):
        (status, instances), run_status, lease = res[3 * i : 3 * i + 3]
        out.append(
            Watched(run_id, step_id, _s(status), _s(run_status), bool(lease), bool(instances))
        )
    return out


def _may_be_queued(v: Watched) -> bool:
    return (
        v.status is not None
        and v.status not in TERMINAL_STEP_STATUSES | PARKED
        and not (v.status == "running" and v.lease_alive)
    )


def _by_queue(store: RunStore, views: list[Watched]) -> dict[str, list[Watched]]:
    out: dict[str, list[Watched]] = {}
    for v in views:
        try:
            queue = _queue(store, v.run_id, v.step_id)
        except RunNotFound:  # the run vanished meanwhile: nothing of it is queued
            continue
        out.setdefault(queue, []).append(v)
    return out


def _act(
    store: RunStore,
    broker: redis.Redis,
    layout: BrokerLayout,
    v: Watched,
    message: Unacked | None,
    is_queued: bool,
    cutoff: float,
) -> None:
    """Decide about one expired entry (the broker is Redis: its messages can be seen)."""
    lease = get_settings().lease_seconds
    if v.status is None or v.run_status in TERMINAL_RUN_STATUSES or v.status in PARKED:
        store.drop_lease_entry(v.run_id, v.step_id, expired_before=cutoff)
    elif v.status == "running" and v.lease_alive:
        return  # alive after all (a renewal is due)
    elif message is not None:
        if _restore(broker, *message, layout):
            log.warning(
                "put step %s of run %s back on its queue (%s)",
                v.step_id,
                v.run_id,
                "its worker was lost" if v.status == "running" else "it was never started",
            )
        store.watch_steps([v.member], lease)
    elif v.status in TERMINAL_STEP_STATUSES:
        # recorded, but its task never handed on (it failed to store what Celery hands on
        # from, or its worker died after the message was acknowledged)
        _hand_on_again(store, v)
        store.drop_lease_entry(v.run_id, v.step_id, expired_before=cutoff)
    elif is_queued:
        store.watch_steps([v.member], lease)  # waiting for a worker: keep watching
    else:
        _republish(store, v)
        store.watch_steps([v.member], lease)


def _act_without_broker(store: RunStore, v: Watched, cutoff: float) -> None:
    """A broker whose messages cannot be seen (AMQP): only received or started steps are
    watched; an entry that runs out means that delivery is gone."""
    if v.status == "running" and v.lease_alive:
        return
    if v.status is not None and v.run_status not in TERMINAL_RUN_STATUSES:
        if v.status in TERMINAL_STEP_STATUSES:
            _hand_on_again(store, v)
        elif v.status not in PARKED:
            _republish(store, v)
    store.drop_lease_entry(v.run_id, v.step_id, expired_before=cutoff)


def _republish(store: RunStore, v: Watched) -> None:
    """The step's message is nowhere: publish the step again."""
    if v.fanned_out:
        _join_again(store, v)
    elif "[" in v.step_id:  # a fan-out instance (its lane goes on from it when it ends)
        log.warning(
            "step %s of run %s: its message was lost; publishing it again", v.step_id, v.run_id
        )
        dispatch.step_signature(store.snapshot(v.run_id), v.run_id, v.step_id).apply_async(
            root_id=v.run_id
        )
    else:
        if v.status != "running":
            log.warning(
                "step %s of run %s (%s) has no message anywhere (lost on its way to a worker)",
                v.step_id,
                v.run_id,
                v.status,
            )
        _fail_over(store, v.run_id, v.step_id, rerun=v.status != "pending")


def _hand_on_again(store: RunStore, v: Watched) -> None:
    """A step recorded as ended whose task never handed on: do what its task had left.

    An instance of a fanned-out step: its lane's next instance and its step's join (the
    transition is idempotent, and watches what it makes due; the join goes out as a
    fan-in message). Any other step: its run continues by dynamic dispatch.
    """
    if "[" not in v.step_id:
        _fail_over(store, v.run_id, v.step_id, rerun=False)
        return
    settings = get_settings()
    watch = settings.lease_seconds if settings.broker_url.startswith("redis") else None
    nxt, join = store.instance_ended(v.run_id, v.step_id, watch)
    snapshot = store.snapshot(v.run_id)
    if nxt:
        log.warning("instance %s of run %s was not sent; sending it", nxt, v.run_id)
        dispatch.publish_steps(snapshot, v.run_id, [nxt])
    if join:
        parent = v.step_id.rsplit("[", 1)[0]
        log.warning("fan-in of step %s of run %s was not run; sending it", parent, v.run_id)
        # a canvas run's join carries the canvas on (canvasfanout)
        send_join(store.continuation(v.run_id, parent), snapshot, v.run_id, parent)


def _join_again(store: RunStore, v: Watched) -> None:
    """A fanned-out step whose fan-in message is gone: publish it once every instance ended."""
    raw = store.step_hashes(v.run_id, [v.step_id])[v.step_id].get("instances") or "[]"
    ids = json.loads(raw)
    statuses = [h.get("status") for h in store.step_hashes(v.run_id, ids).values()]
    if all(s in TERMINAL_STEP_STATUSES for s in statuses):
        log.warning(
            "fan-in of step %s of run %s was lost; publishing it again", v.step_id, v.run_id
        )
        message = store.continuation(v.run_id, v.step_id)
        send_join(message, store.snapshot(v.run_id), v.run_id, v.step_id)


def _queue(store: RunStore, run_id: str, step_id: str) -> str:
    base = step_id.rsplit("[", 1)[0]
    steps: list[dict[str, Any]] = store.snapshot(run_id)["steps"]
    spec = next((s for s in steps if s["id"] == base), {})
    return spec.get("queue") or get_settings().default_queue


def _fail_over(store: RunStore, run_id: str, step_id: str, *, rerun: bool) -> None:
    """The broker lost a step's message (and, in a canvas, the rest of its chain with it).

    The run continues by dynamic dispatch from its record: the lost step is published
    again if it had not finished, and so is every step whose needs have all finished.
    """
    snapshot = store.snapshot(run_id)
    graph = snapshot_graph(snapshot)
    lease = get_settings().lease_seconds
    ready = store.fail_over_to_dynamic(run_id, graph.children, lease)
    if rerun and step_id not in ready:
        ready.append(step_id)
    log.warning(
        "message of step %s of run %s was lost; run %s continues by dynamic "
        "dispatch (publishing %s)",
        step_id,
        run_id,
        run_id,
        ", ".join(ready) or "nothing",
    )
    dispatch.publish_steps(snapshot, run_id, ready)
