"""The worker's own components, as bootsteps of Celery's worker blueprint (``make_app`` adds them).

Each is started and stopped with the worker, in the blueprint's order, and only in a worker:
importing the engine starts nothing.

* ``Containment``: chooses how steps are contained (containment.py) while the worker is
  being built, so before the pool forks its children (every step's ``create`` runs before
  any step starts); a worker told to use cgroups where it cannot does not start.
* ``Reconciler``: the lease reconciler thread. When a whole worker dies (SIGKILL, power
  loss), its unacknowledged message would only come back after Redis' visibility timeout
  (hours). Instead every worker runs this thread over the lease index (recovery.py): when
  an entry runs out, one worker (by a Redis lock) puts that step's original message back on
  its queue, or publishes the step again when its message is gone, so the step goes on
  elsewhere within about one lease period (``RUNBOOK_LEASE_SECONDS``, default 30 s). It
  also renews the watches of the messages this worker holds (workerhooks) and finishes
  steps whose ended child run never handed on (childruns).
* ``HandBack``: on SIGTERM/SIGINT Celery stops taking new messages and waits for running
  tasks. After ``RUNBOOK_SHUTDOWN_GRACE`` seconds we raise a flag file; steps still
  running kill their process group and hand themselves back (pending again, attempt not
  counted).

Why the worker blueprint and these hooks: the reconciler talks to the run store and the
broker over its own Redis clients, so it must outlive a broker reconnection (a consumer
blueprint step would be stopped and started again with every reconnection). Celery's
shutdown closes every step first (in boot order) and then stops them (in reverse): the pool
stops last among ours, and in a warm shutdown its ``stop`` is what waits for running
tasks, so ``close`` is where the hand-back grace starts and the reconciler is told to end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from celery import bootsteps, signals

from ..core.settings import get_settings
from ..store.redisconn import client_for
from . import containment, workerhooks, workerstore
from .brokerlayout import BrokerLayout, broker_layout
from .childruns import sweep_waiting
from .recovery import recover_once

log = logging.getLogger("runbook_celery.worker")

POOL = "celery.worker.components:Pool"
RECONCILER_THREAD = "runbook-reconciler"


class Containment(bootsteps.StartStopStep):
    """Choose how steps are contained, before the pool forks; say so once logging is up."""

    def create(self, w: Any) -> None:
        _clear_flag()  # a file left by an earlier process with this pid
        try:
            containment.setup(get_settings().containment)
        except containment.ContainmentError as exc:
            log.critical("%s", exc.strerror)
            raise SystemExit(2) from None

    def start(self, w: Any) -> None:
        log.info("%s", containment.current().describe())


class Reconciler(bootsteps.StartStopStep):
    """The lease reconciler thread of this worker (see the module docstring)."""

    requires = (POOL,)  # started after the pool has forked its children

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, w: Any) -> None:
        self.stopping.clear()
        self.thread = threading.Thread(target=self.run, name=RECONCILER_THREAD, daemon=True)
        self.thread.start()

    def close(self, w: Any) -> None:
        self.stopping.set()  # shutdown has begun: no new pass

    def stop(self, w: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=2)  # a pass in flight ends at its Redis timeouts

    def terminate(self, w: Any) -> None:
        self.stopping.set()  # cold shutdown: do not wait for a pass in flight

    def run(self) -> None:
        settings, store = workerstore.worker_store()
        redis_broker = settings.broker_url.startswith("redis")
        broker = client_for(settings.broker_url) if redis_broker else None
        layout = broker_layout()
        interval = max(0.5, settings.lease_seconds / 3)
        while not self.stopping.wait(interval):
            with contextlib.suppress(OSError):  # dead workers whose guardians died too (OOM)
                containment.sweep_dead_workers()
            try:
                self.reconcile(store, broker, layout, settings.lease_seconds, interval)
            except Exception:  # keep watching; a Redis blip must not kill the thread
                log.exception("lease reconciler pass failed")

    @staticmethod
    def reconcile(
        store: Any, broker: Any, layout: BrokerLayout, lease_seconds: int, interval: float
    ) -> None:
        """One pass: renew held watches, recover expired ones, finish stranded parents."""
        workerhooks.keep_watching(store, lease_seconds)
        recover_once(store, broker, max(2, lease_seconds), layout)
        _sweep_children(store, lease_seconds, interval)


def _sweep_children(store: Any, lease_seconds: float, interval: float) -> None:
    """One worker per interval finishes steps whose ended child run never handed on."""
    finish_outside = workerhooks.finish_outside()
    if finish_outside is None:
        return  # the step task module is not loaded in this process: no worker here
    turn = f"{store.keys.prefix}:recover:children"
    if store.r.set(turn, os.getpid(), nx=True, px=max(1, int(interval * 1000))):
        sweep_waiting(store, finish_outside, lease_seconds)


class HandBack(bootsteps.StartStopStep):
    """Hand running steps back once the shutdown grace is over (see the module docstring)."""

    requires = (POOL,)  # closed right after the pool stops taking tasks

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.timer: threading.Timer | None = None

    def create(self, w: Any) -> None:
        # Celery's last word on a warm shutdown, sent once the pool has stopped (no step
        # hook runs that late); connected here, by the worker being built, not at import
        signals.worker_shutdown.connect(_on_worker_shutdown, weak=False, dispatch_uid=__name__)

    def close(self, w: Any) -> None:
        if self.timer is not None:
            return
        grace = get_settings().shutdown_grace
        self.timer = threading.Timer(grace, _raise_flag, args=(grace,))
        self.timer.daemon = True
        self.timer.start()

    def stop(self, w: Any) -> None:
        return None  # the timer fires while the pool (stopped after this) waits for steps


def _raise_flag(grace: float) -> None:
    with open(workerstore.shutdown_flag_path(os.getpid()), "w") as fh:
        fh.write("handback\n")
    log.warning("shutdown grace of %ss over: handing running steps back", grace)


def _on_worker_shutdown(**_: Any) -> None:
    _clear_flag()


def _clear_flag() -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(workerstore.shutdown_flag_path(os.getpid()))
