"""Worker-process duties beyond single steps: recover steps of lost workers, hand back on shutdown.

Recovery: a running step refreshes a lease in Redis. When a whole worker dies (SIGKILL,
power loss), its unacknowledged message would only come back after Redis' visibility
timeout (hours). Instead, every worker watches the lease index; when a lease runs out, one
worker (by a Redis lock) puts that step's original message back on its queue, so the step
is retried elsewhere within about one lease period (``RUNBOOK_LEASE_SECONDS``, default 30 s).

Shutdown: on SIGTERM/SIGINT Celery stops taking new messages and waits for running tasks.
After ``RUNBOOK_SHUTDOWN_GRACE`` seconds we raise a flag file; steps still running kill
their process group and hand themselves back (pending again, attempt not counted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any

import redis
from celery import signals

from .events import TERMINAL_RUN_STATUSES, StepStatus
from .redisconn import client_for
from .settings import get_settings

log = logging.getLogger("runbook_celery.worker")

_RESTORE_LUA = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[2])
  return 1
end
return 0
"""

_stop = threading.Event()
TERMINAL_STEP_STATUSES = frozenset(s.value for s in StepStatus if s.terminal)
_unwatched: deque[str] = deque(maxlen=100_000)  # received, but the watch was not written


def restore_unacked(broker: redis.Redis, task_id: str) -> bool:
    """Put the unacknowledged message of ``task_id`` back on its queue (kombu's layout)."""
    for tag, raw in broker.hscan_iter("unacked", count=500):
        try:
            payload, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if payload.get("headers", {}).get("id") != task_id:
            continue
        payload.setdefault("headers", {})["redelivered"] = True
        priority = payload.get("properties", {}).get("priority") or 0
        queue = f"{routing_key}:{priority}" if priority else routing_key  # kombu's priority lists
        script = broker.register_script(_RESTORE_LUA)
        return bool(
            script(keys=["unacked", "unacked_index", queue], args=[tag, json.dumps(payload)])
        )
    return False


def message_queued(broker: redis.Redis, queue: str, task_id: str) -> bool:
    """Whether a message for ``task_id`` waits in ``queue`` (at any priority)."""
    needle = f'"id": "{task_id}"'.encode()
    for key in [queue, *(f"{queue}:{p}" for p in range(1, 10))]:
        if any(needle in m for m in broker.lrange(key, 0, -1)):
            return True
    return False


def recover_once(store: Any, broker: redis.Redis | None, lock_seconds: int) -> list[str]:
    """One pass over expired leases; returns the ``run|step`` entries dealt with.

    An entry outlives its lease when the worker died while the step ran, or after the
    step was recorded but before what follows it was handed on (the entry is dropped by
    ``task_postrun``), or when a delivered message was dropped before the step started
    (the entry is written when the message is received, see ``_watch_delivery``).
    Either way the original message, still unacknowledged, goes back on its queue: a
    running step runs again, a finished one is replayed and hands on, a pending one
    starts. A message that is gone is published again (dynamic dispatch).
    """
    from .dispatch import step_signature

    dealt = []
    cutoff = time.time()
    for run_id, step_id in store.expired_leases(before=cutoff):
        member = f"{run_id}|{step_id}"
        lock = f"{store.keys.prefix}:recover:{member}"
        if not store.r.set(lock, os.getpid(), nx=True, ex=lock_seconds):
            continue
        h = store.step_hashes(run_id, [step_id])[step_id]
        status = h.get("status")
        if status is None:  # the run expired or was deleted
            store.drop_lease_entry(run_id, step_id)
            continue
        if status == "running" and store.r.exists(store.keys.lease(run_id, step_id)):
            continue  # alive after all (a late refresh)
        task_id = f"{run_id}.{step_id}"
        if broker is not None and restore_unacked(broker, task_id):
            log.warning(
                "put step %s of run %s back on its queue (%s)",
                step_id,
                run_id,
                "worker lost" if status != "pending" else "delivery dropped before it started",
            )
        elif status in TERMINAL_STEP_STATUSES:
            if store.run_status(run_id) not in TERMINAL_RUN_STATUSES:
                _fail_over(store, run_id, step_id, rerun=False)
        elif status not in ("running", "pending", "retrying"):
            pass  # parked by a gate (paused, approval, max_active, decision): acked on purpose
        elif broker is not None and message_queued(broker, _queue(store, run_id, step_id), task_id):
            if status == "running":
                continue  # already back in a queue: a worker will claim it
        elif store.run_status(run_id) in TERMINAL_RUN_STATUSES:
            pass
        elif "[" in step_id:  # a fan-out instance: its lane is gone; run it on its own
            step_signature(store.snapshot(run_id), run_id, step_id).apply_async(root_id=run_id)
        else:
            # running: its worker was lost with the message; pending/retrying: the message
            # was delivered, then dropped or acknowledged without the step starting
            if status != "running":
                log.warning(
                    "step %s of run %s (%s) was delivered but never started; its message is gone",
                    step_id,
                    run_id,
                    status,
                )
            _fail_over(store, run_id, step_id, rerun=status != "pending")
        store.drop_lease_entry(run_id, step_id, expired_before=cutoff)
        dealt.append(member)
    return dealt


def _queue(store: Any, run_id: str, step_id: str) -> str:
    base = step_id.rsplit("[", 1)[0]
    spec = next((s for s in store.snapshot(run_id)["steps"] if s["id"] == base), {})
    return spec.get("queue") or get_settings().default_queue


def _fail_over(store: Any, run_id: str, step_id: str, *, rerun: bool) -> None:
    """The broker lost a step's message (and, in a canvas, the rest of its chain with it).

    The run continues by dynamic dispatch from its record: the lost step is published
    again if it had not finished, and so is every step whose needs have all finished.
    """
    from .compile import snapshot_graph
    from .dispatch import publish_steps

    snapshot = store.snapshot(run_id)
    graph = snapshot_graph(snapshot)
    ready = store.fail_over_to_dynamic(run_id, graph.children)
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
    publish_steps(snapshot, run_id, ready)


@signals.task_postrun.connect
def _handed_on(
    sender: Any = None, args: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """The step's task is over and Celery has sent what follows: stop watching it."""
    from .app import STEP_TASK, handed_on
    from .tasks import StepFailed, _worker_store

    if getattr(sender, "name", None) != STEP_TASK or not args or len(args) != 2:
        return
    if state == "FAILURE" and not isinstance(retval, StepFailed):
        return  # e.g. publishing what follows failed: the reconciler will replay the step
    if state == "RETRY":
        # retry/handback already stopped watching in their transition; a "busy" delivery
        # must not drop the entry of the delivery that holds the lease
        return
    if getattr(handed_on, "dropped", None) == f"{args[0]}|{args[1]}":
        handed_on.dropped = None
        return  # already dropped with the stored result (app.ResultBackend)
    with contextlib.suppress(redis.RedisError):
        _worker_store()[1].drop_lease_entry(args[0], args[1])


def _step_member(request: Any) -> str | None:
    """``run|step`` of a worker's request for a step task (None for other tasks)."""
    from .app import STEP_TASK

    # request.name is the shadow name ("<workflow>.<step>"); the task knows its real name
    if getattr(getattr(request, "task", None), "name", None) != STEP_TASK:
        return None
    args = getattr(request, "args", None)
    if not args or len(args) != 2:
        return None
    return f"{args[0]}|{args[1]}"


@signals.task_received.connect
def _watch_delivery(request: Any = None, **_: Any) -> None:
    """A step's message left its queue for this worker: watch the step from now on.

    Until the step starts (its lease), nothing else would notice the message getting
    lost: a broker connection drop makes Celery forget reserved and scheduled requests
    (kombu cannot put them back while Redis is down, so they sit in ``unacked`` for the
    visibility timeout) and acknowledge requests it terminated before they started.
    The reconciler thread keeps the entry alive while this worker still holds the
    request; if it stops holding it without the step having started, the entry runs out
    and ``recover_once`` restores or republishes the message.
    """
    from .tasks import _worker_store

    member = _step_member(request)
    if member is None:
        return
    try:
        settings, store = _worker_store()
        store.watch_steps([member], settings.lease_seconds)
    except redis.RedisError:
        _unwatched.append(member)


def _held_not_started() -> list[str]:
    """Step requests this worker holds that have not reached the pool yet."""
    from celery.worker import state

    for _ in range(5):  # the consumer thread changes these sets while we read them
        try:
            active = set(state.active_requests)
            held = [*state.reserved_requests, *state.scheduled_requests]
            break
        except RuntimeError:
            continue
    else:
        return []
    members = (_step_member(r) for r in held if r not in active)
    return [m for m in members if m is not None]


def _keep_watching(store: Any, seconds: int) -> None:
    """Write the watches that failed at receipt; extend those of requests still held."""
    pending = []
    while _unwatched:
        pending.append(_unwatched.popleft())
    try:
        store.watch_steps(pending, seconds)
    except redis.RedisError:
        _unwatched.extend(pending)
        raise
    store.watch_steps(_held_not_started(), seconds, only_existing=True)


def _reconciler() -> None:
    from .tasks import _worker_store

    settings, store = _worker_store()
    broker = client_for(settings.broker_url) if settings.broker_url.startswith("redis") else None
    interval = max(0.5, settings.lease_seconds / 3)
    while not _stop.wait(interval):
        try:
            _keep_watching(store, settings.lease_seconds)
            recover_once(store, broker, max(2, settings.lease_seconds))
        except Exception:  # keep watching; a Redis blip must not kill the thread
            log.exception("lease reconciler pass failed")


@signals.worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    _stop.clear()
    threading.Thread(target=_reconciler, name="runbook-reconciler", daemon=True).start()


@signals.worker_shutting_down.connect
def _arm_handback(**_: Any) -> None:
    from .tasks import shutdown_flag_path

    _stop.set()
    grace = get_settings().shutdown_grace
    flag = shutdown_flag_path(os.getpid())

    def raise_flag() -> None:
        with open(flag, "w") as fh:
            fh.write("handback\n")
        log.warning("shutdown grace of %ss over: handing running steps back", grace)

    timer = threading.Timer(grace, raise_flag)
    timer.daemon = True
    timer.start()


@signals.worker_init.connect
@signals.worker_shutdown.connect
def _clear_flag(**_: Any) -> None:
    from .tasks import shutdown_flag_path

    with contextlib.suppress(FileNotFoundError):
        os.unlink(shutdown_flag_path(os.getpid()))
