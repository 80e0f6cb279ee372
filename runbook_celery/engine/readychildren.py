"""In dynamic dispatch, FINISH sends the children it makes ready, in the same script.

A step's FINISH joins its children (their arrived sets) and answers which are now ready;
the task then published each (a round trip per child), leaving a moment in which the step
is recorded but a ready child is not yet sent (the reconciler closes it, a lease later).
When the broker and the store share one Redis database, each child's message is built
before FINISH by Celery and kombu as usual, but captured instead of sent
(brokerlayout.captured_publish), and ``finish_send.lua`` pushes the messages of the
children it makes ready, atomically with the transition. A child that FINISH does not make
ready (another need still open) is not sent, and its message is forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Task

from ..core.settings import Settings
from ..store import FinishOutcome
from . import dispatch
from .brokerlayout import captured_publish
from .chainlink import drop_trail, shares_redis

log = logging.getLogger("runbook_celery.worker")


@dataclass
class PreparedChildren:
    """Each child's message (list key, payload), for FINISH to push if it is made ready."""

    messages: dict[str, tuple[str, str]]
    trails: dict[str, Any] = field(default_factory=dict)  # child -> its AsyncResult


def prepare(
    task: Task[..., Any] | None,
    settings: Settings,
    snapshot: Mapping[str, Any],
    run_id: str,
    children: list[str],
) -> PreparedChildren | None:
    """The messages of ``children``, built and captured; None when they are published the
    usual way (another broker, nothing to send, or the message could not be built)."""
    if task is None or not children or not shares_redis(settings):
        return None
    trails: dict[str, Any] = {}
    try:
        with (
            task.app.producer_or_acquire() as producer,
            captured_publish(producer.channel) as puts,
        ):
            for child in children:
                sig = dispatch.step_signature(snapshot, run_id, child)
                trails[child] = sig.apply_async(root_id=run_id, producer=producer)
    except Exception as exc:  # e.g. declaring the queue on a full Redis
        log.info("run %s: children of a step published the usual way (%r)", run_id, exc)
        _forget(task, trails.values())
        return None
    if puts is None or len(puts) != len(children):
        _forget(task, trails.values())
        return None
    return PreparedChildren(dict(zip(children, puts, strict=True)), trails)


def settle(
    task: Task[..., Any] | None, prepared: PreparedChildren | None, outcome: FinishOutcome
) -> frozenset[str]:
    """The children FINISH sent (ready, with a message); the others are not this task's
    children (Celery's ``result.children``) unless published later."""
    if prepared is None:
        return frozenset()
    sent = frozenset(outcome.ready) & prepared.messages.keys() if outcome.recorded else frozenset()
    _forget(task, (t for c, t in prepared.trails.items() if c not in sent))
    return sent


def _forget(task: Task[..., Any] | None, trails: Any) -> None:
    request = getattr(task, "request", None)
    if request is not None:
        for trail in list(trails):
            drop_trail(request, trail)
