"""A chain link's FINISH also does what Celery does after the task returns.

After a step task of a chain returns, Celery publishes the chain's next link, then stores
the task's result, and the stored result hands the step on (app.ResultBackend): three
round trips after FINISH, and a moment in which the step is recorded but its successor
not yet published (the reconciler closes it, a lease later). When the broker, the result
backend and the store share one Redis database, FINISH does all of it in one script
(``finish_hand_on.lua``): the next link's message is built by Celery and kombu as usual,
but captured instead of sent (brokerlayout.captured_publish), and pushed by the script
only if FINISH records the step. The task then tells Celery that the chain went on
(``request.chain`` emptied) and that its result is stored (``handed_on.finished``).

Only a plain next link: a chord or group next (its counter is Celery's), links with
callbacks, eager calls and failures go Celery's usual way. A step in a chord's header
(a chord member) has its result stored by FINISH too, but nothing more: Celery counts it
toward its chord afterwards (``on_chord_part_return``), and it hands on once counted
(workerhooks, ``task_postrun``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from celery import Task, states
from celery.canvas import Signature, signature
from celery.exceptions import BackendStoreError

from ..core.settings import Settings
from ..store import ChainLink, FinishOutcome, Successor
from .app import handed_on
from .brokerlayout import captured_publish

log = logging.getLogger("runbook_celery.worker")


@dataclass(frozen=True)
class PreparedLink:
    """A chain link's hand-on, ready for FINISH, and the next link's result (its trail)."""

    link: ChainLink
    trail: Any  # the AsyncResult Celery added to the request's children


def shares_redis(settings: Settings) -> bool:
    """The broker is the store's Redis database (the result backend always is)."""
    url = settings.broker_url
    return url.startswith(("redis://", "rediss://")) and url == settings.redis_url


def prepare(
    task: Task[..., Any] | None,
    settings: Settings,
    retval: dict[str, Any],
    successors: list[Successor],
) -> PreparedLink | None:
    """What FINISH writes for Celery: this task's result, and for a chain link the next
    link's message and the hand-on; None when Celery goes on its usual way."""
    request = getattr(task, "request", None)
    if task is None or request is None or not _eligible(request):
        return None
    if not shares_redis(settings):
        return None
    if request.chord:  # a chord member: its result only; it hands on once counted
        return _with_result(task, request, retval, ChainLink("", "", 0, hand_on=False), None)
    nxt = signature(request.chain[-1], app=task.app)
    if type(nxt) is not Signature:  # a group, chord or chain next: Celery's to send
        return None
    captured = _capture_next(task, request, nxt, retval)
    if captured is None:
        return None
    (queue_key, payload), trail = captured
    link = ChainLink("", "", 0, queue_key, payload, successors=tuple(successors))
    return _with_result(task, request, retval, link, trail)


def _capture_next(
    task: Task[..., Any], request: Any, nxt: Signature, retval: dict[str, Any]
) -> tuple[tuple[str, str], Any] | None:
    """The next link's message as Celery's tracer would send it, captured: ((list key,
    payload), its AsyncResult), or None (then Celery sends it after FINISH)."""
    inherit = task.app.conf.task_inherit_parent_priority
    priority = (request.delivery_info or {}).get("priority") if inherit else None
    trail = None
    try:
        with (
            task.app.producer_or_acquire() as producer,
            captured_publish(producer.channel) as puts,
        ):
            options: dict[str, Any] = {"chain": request.chain[:-1], "priority": priority}
            trail = nxt.apply_async(
                (retval,),
                parent_id=request.id,
                root_id=request.root_id or request.id,
                producer=producer,
                **options,
            )
    except Exception as exc:  # e.g. declaring the queue on a full Redis
        # building the message may talk to the broker (kombu declares a queue once per
        # channel): whatever goes wrong there, the link goes Celery's usual way, after
        # FINISH, which waits out a full Redis (fullredis)
        log.info("step %s: next chain link sent the usual way (%r)", request.id, exc)
        drop_trail(request, trail)
        return None
    if puts is None or len(puts) != 1:
        drop_trail(request, trail)
        return None
    return puts[0], trail


def _with_result(
    task: Task[..., Any], request: Any, retval: dict[str, Any], link: ChainLink, trail: Any
) -> PreparedLink | None:
    """``link`` with this task's result as Celery's backend would store it (children
    included: the next link, once captured)."""
    backend: Any = task.backend  # our ResultBackend (app.py)
    try:
        key, value, expires = backend.encoded_result(
            request.id, retval, states.SUCCESS, None, request
        )
    except BackendStoreError:  # too large: Celery's own store says so, as it would have
        drop_trail(request, trail)
        return None
    ttl = int(backend.expires if expires is None else expires or 0)
    return PreparedLink(
        replace(link, result_key=key, result_value=value, result_expires=ttl), trail
    )


def settle(
    task: Task[..., Any] | None,
    prepared: PreparedLink | None,
    outcome: FinishOutcome,
    member: str,
) -> None:
    """After FINISH: if it recorded the step, the result is stored and a chain went on
    (Celery must do neither again); if not, Celery goes on as usual."""
    if prepared is None or task is None:
        return
    request = task.request
    if not outcome.recorded:
        drop_trail(request, prepared.trail)
        return
    handed_on.finished = request.id
    if prepared.link.payload is not None:
        request.chain = None
    if prepared.link.hand_on:
        handed_on.dropped = member  # task_postrun: handed on already


def _eligible(request: Any) -> bool:
    """A chain link (not the last of a chord's chain) or a chord member, no links."""
    return bool(
        (bool(request.chain) != bool(request.chord))
        and not request.callbacks
        and not request.is_eager
        and not request.called_directly
    )


def drop_trail(request: Any, trail: Any) -> None:
    """The next link was not sent: it is not this task's child (yet; Celery adds it when
    it sends the link)."""
    children = getattr(request, "children", None)
    if children and trail in children:
        children.remove(trail)
