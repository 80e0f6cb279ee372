"""Per-task worker hooks: watch a step's message from its receipt, hand a step on after its task.

Recovery (recovery.py): a step is watched in the lease index from the moment it is ready
until its task has handed on; a worker holding its message, and the step's lease while it
runs, keep the watch alive. Here: the watch written when a worker receives a step's message
(``task_received``), its renewal while the worker holds the message (``keep_watching``, run
by the reconciler of workersteps.py), and the hand-on of a step whose result was not stored
(``task_postrun``: a fanned-out step of a canvas, counted by its chord).

Why signals and not bootsteps: these run once per task, where the task is. ``task_postrun``
fires in the process that ran the task (a pool child, or the caller in eager mode), where
no bootstep exists; ``task_received`` fires in the consumer for each message, and Celery's
consumer blueprint has no per-message hook short of replacing its task strategy. Connecting
a receiver at import starts nothing: the worker's components (the reconciler thread, the
shutdown hand-back) are bootsteps in workersteps.py, started only by a worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
from celery import signals
from celery.worker import state

from . import workerstore
from .app import FANIN_TASK, STEP_TASK, handed_on, handed_on_successors
from .recovery import recover_once
from .taskevents import StepFailed

log = logging.getLogger("runbook_celery.worker")

__all__ = ["recover_once"]  # the reconciler's pass (recovery.py), as tests know it

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
    The reconciler (workersteps.py) keeps the entry alive while this worker still holds the
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


def keep_watching(store: Any, seconds: int) -> None:
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


# The outside finish (``step/delivery.py: finish_outside``), which the reconciler uses for a
# child run's parent. The stages import the app, which adds the reconciler's bootstep
# (workersteps), so this module cannot import them: ``tasks`` hands the function over.
_finish_outside: Callable[..., None] | None = None


def use_finish_outside(finish: Callable[..., None]) -> None:
    """Called once by ``tasks``: how the reconciler finishes a step from outside."""
    global _finish_outside
    _finish_outside = finish


def finish_outside() -> Callable[..., None] | None:
    """The outside finish ``tasks`` handed over (None where the step task is not loaded)."""
    return _finish_outside
