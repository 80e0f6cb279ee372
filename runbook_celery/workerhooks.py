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
from typing import Any

import redis
from celery import signals

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


def recover_once(store: Any, broker: redis.Redis | None, lock_seconds: int) -> list[str]:
    """One pass over expired leases; returns the ``run|step`` entries put back in a queue."""
    from .dispatch import step_signature

    recovered = []
    for run_id, step_id in store.expired_leases():
        member = f"{run_id}|{step_id}"
        lock = f"{store.keys.prefix}:recover:{member}"
        if not store.r.set(lock, os.getpid(), nx=True, ex=lock_seconds):
            continue
        h = store.step_hashes(run_id, [step_id])[step_id]
        if h.get("status") != "running" or store.r.exists(store.keys.lease(run_id, step_id)):
            if h.get("status") != "running":
                store.drop_lease_entry(run_id, step_id)
            continue
        task_id = f"{run_id}.{step_id}"
        restored = broker is not None and restore_unacked(broker, task_id)
        if not restored:
            snapshot = store.snapshot(run_id)
            if snapshot["mode"] != "dynamic" and "[" not in step_id:
                # a canvas step's message carries its chain; only the broker can give it back
                log.warning("lease of %s expired but its message is not in unacked", task_id)
                continue
            step_signature(snapshot, run_id, step_id).apply_async(root_id=run_id)
        store.drop_lease_entry(run_id, step_id)
        log.warning("recovered step %s of run %s from a lost worker", step_id, run_id)
        recovered.append(member)
    return recovered


def _reconciler() -> None:
    from .tasks import _worker_store

    settings, store = _worker_store()
    broker = client_for(settings.broker_url) if settings.broker_url.startswith("redis") else None
    interval = max(0.5, settings.lease_seconds / 3)
    while not _stop.wait(interval):
        try:
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
