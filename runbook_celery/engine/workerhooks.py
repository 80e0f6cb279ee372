"""Worker-process duties beyond single steps: recover steps of lost workers, hand back on shutdown.

Recovery: a step is watched in the lease index from the moment it is ready until its
task has handed on (see recovery.py); a worker holding its message, and the step's lease
while it runs, keep the watch alive. When a whole worker dies (SIGKILL, power loss), its
unacknowledged message would only come back after Redis' visibility timeout (hours).
Instead, every worker runs a reconciler thread over the lease index; when an entry runs
out, one worker (by a Redis lock) puts that step's original message back on its queue, or
publishes the step again when its message is gone, so the step goes on elsewhere within
about one lease period (``RUNBOOK_LEASE_SECONDS``, default 30 s).

Shutdown: on SIGTERM/SIGINT Celery stops taking new messages and waits for running tasks.
After ``RUNBOOK_SHUTDOWN_GRACE`` seconds we raise a flag file; steps still running kill
their process group and hand themselves back (pending again, attempt not counted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from celery import signals

from ..core.settings import get_settings
from ..store.redisconn import client_for
from . import containment, workerstore
from .app import FANIN_TASK, STEP_TASK, handed_on, handed_on_successors
from .childruns import sweep_waiting
from .recovery import recover_once
from .taskevents import StepFailed

log = logging.getLogger("runbook_celery.worker")

__all__ = ["recover_once"]  # the reconciler's pass lives in recovery.py

_stop = threading.Event()
_unwatched: deque[str] = deque(maxlen=100_000)  # received, but the watch was not written


@signals.task_postrun.connect
def _handed_on(
    sender: Any = None, args: Any = None, state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """The step's task is over and Celery has sent what follows: hand the step on."""

    # a join in a chord header (a fanned-out step of a canvas) hands on here too
    if getattr(sender, "name", None) not in (STEP_TASK, FANIN_TASK) or not args or len(args) != 2:
        return
    if state == "FAILURE" and not isinstance(retval, StepFailed):
        return  # e.g. publishing what follows failed: the reconciler will replay the step
    if state in ("RETRY", "IGNORED"):
        # retry/handback keep watching the step for its next message; a "busy" or a
        # superseded delivery must not end the entry of the delivery that holds the step,
        # and a parked step stopped being watched in the transition that parked it
        return
    member = f"{args[0]}|{args[1]}"
    if getattr(handed_on, "dropped", None) == member:
        handed_on.dropped = None
        return  # already handed on with the stored result (app.ResultBackend)
    with contextlib.suppress(redis.RedisError):
        settings, store = workerstore.worker_store()
        successors, ended = handed_on_successors(member)
        store.hand_on(args[0], args[1], successors, settings.lease_seconds, ended=ended)


def _step_member(request: Any) -> str | None:
    """``run|step`` of a worker's request for a step task (None for other tasks)."""

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

    member = _step_member(request)
    if member is None:
        return
    try:
        settings, store = workerstore.worker_store()
        store.watch_steps([member], settings.lease_seconds)
    except redis.RedisError:
        _unwatched.append(member)


def _held_not_started() -> list[str]:
    """Step requests this worker holds that have not reached the pool yet."""
    from celery.worker import state

    for _ in range(5):  # the consumer thread changes these sets while we read them
        try:
            active = set(state.active_requests)
            # celery-types does not declare scheduled_requests (Celery has it since 5.3)
            held = [*state.reserved_requests, *state.scheduled_requests]  # type: ignore[attr-defined]
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

    settings, store = workerstore.worker_store()
    broker = client_for(settings.broker_url) if settings.broker_url.startswith("redis") else None
    interval = max(0.5, settings.lease_seconds / 3)
    while not _stop.wait(interval):
        with contextlib.suppress(OSError):  # dead workers whose guardians died too (OOM)
            containment.sweep_dead_workers()
        try:
            _keep_watching(store, settings.lease_seconds)
            recover_once(store, broker, max(2, settings.lease_seconds))
            _sweep_children(store, settings.lease_seconds, interval)
        except Exception:  # keep watching; a Redis blip must not kill the thread
            log.exception("lease reconciler pass failed")


# The step task module's outside finish (``tasks.finish_outside``): tasks imports this module
# to connect the worker's signals, so it hands its function over instead of being imported.
_finish_outside: Callable[..., None] | None = None


def use_finish_outside(finish: Callable[..., None]) -> None:
    """Called once by ``tasks``: how the reconciler finishes a step from outside."""
    global _finish_outside
    _finish_outside = finish


def _sweep_children(store: Any, lease_seconds: float, interval: float) -> None:
    """One worker per interval finishes steps whose ended child run never handed on."""
    finish_outside = _finish_outside
    if finish_outside is None:
        return  # the step task module is not loaded in this process: no worker here
    turn = f"{store.keys.prefix}:recover:children"
    if store.r.set(turn, os.getpid(), nx=True, px=max(1, int(interval * 1000))):
        sweep_waiting(store, finish_outside, lease_seconds)


@signals.worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    log.info("%s", containment.current().describe())  # worker_init is too early to log
    _stop.clear()
    threading.Thread(target=_reconciler, name="runbook-reconciler", daemon=True).start()


@signals.worker_shutting_down.connect
def _arm_handback(**_: Any) -> None:

    _stop.set()
    grace = get_settings().shutdown_grace
    flag = workerstore.shutdown_flag_path(os.getpid())

    def raise_flag() -> None:
        with open(flag, "w") as fh:
            fh.write("handback\n")
        log.warning("shutdown grace of %ss over: handing running steps back", grace)

    timer = threading.Timer(grace, raise_flag)
    timer.daemon = True
    timer.start()


@signals.worker_init.connect
def _contain_steps(**_: Any) -> None:
    """Choose how steps are contained before the pool forks (containment.py); a worker
    told to use cgroups where it cannot does not start."""
    try:
        containment.setup(get_settings().containment)
    except containment.ContainmentError as exc:
        log.critical("%s", exc.strerror)
        raise SystemExit(2) from None


@signals.worker_init.connect
@signals.worker_shutdown.connect
def _clear_flag(**_: Any) -> None:

    with contextlib.suppress(FileNotFoundError):
        os.unlink(workerstore.shutdown_flag_path(os.getpid()))
