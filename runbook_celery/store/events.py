"""Reading events, and the vocabulary of statuses and event types (``vocabulary``) with them.

``events.read()`` and ``events.follow()`` give Python code the same durable, resumable
event streams the ``runbook-celery events`` command prints.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, TypeVar

import redis

from ..core.errors import BackendUnavailable, InvalidOperation, RunNotFound
from ..core.settings import Settings, get_settings
from ..definition.vocabulary import (
    TERMINAL_EVENTS,
    TERMINAL_RUN_STATUSES,
    EventType,
    FailureReason,
    RunStatus,
    StepStatus,
    WaitReason,
)
from . import RunStore
from .reconnect import Reconnector, resume_on_loss
from .redisconn import get_client, redact

__all__ = [
    "LATEST",
    "START",
    "TERMINAL_EVENTS",
    "TERMINAL_RUN_STATUSES",
    "Event",
    "EventType",
    "FailureReason",
    "RunStatus",
    "StepStatus",
    "WaitReason",
    "check_since",
    "follow",
    "read",
]


# ---------------------------------------------------------------------------- reading events
#
# The per-run stream ``keys.run_events(run_id)`` and the global stream ``keys.global_events``
# are Redis Streams: every entry has an id (``<ms>-<seq>``) that only grows, so a consumer
# that remembers the last id it handled resumes exactly after it with ``since=<id>``.

START = "0-0"  # the beginning of a stream
LATEST = "$"  # only events added from now on
_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_PAGE = 500


@dataclass(frozen=True)
class Event:
    """One event as stored; ``id`` is its stream id, the point to resume after."""

    id: str
    type: str
    run_id: str
    workflow: str
    ts: str
    step: str | None = None
    attempt: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. ``delay`` of a retry

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> Event:
        return cls(
            id=entry_id,
            type=fields.get("type", ""),
            run_id=fields.get("run_id", ""),
            workflow=fields.get("workflow", ""),
            ts=fields.get("ts", ""),
            step=fields.get("step") or None,
            attempt=_int_or_none(fields.get("attempt")),
            exit_code=_int_or_none(fields.get("exit_code")),
            reason=fields.get("reason") or None,
            extra={k: v for k, v in fields.items() if k not in _MODELLED},
        )

    @property
    def ends_run(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        """Flat and JSON-able: the modelled fields, then any extra ones as stored."""
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}


_MODELLED = frozenset(
    {"type", "run_id", "workflow", "ts", "step", "attempt", "exit_code", "reason"}
)


def check_since(since: str) -> str:
    """Validate a resume point: a stream id, ``0`` (start) or ``$`` (only new events).

    Raises:
        InvalidOperation: ``since`` is not a stream id.
    """

    if since == LATEST or _STREAM_ID.match(since):
        return since
    raise InvalidOperation(
        f"--since {since!r} is not an event id: use an id printed by `events` "
        "(like 1700000000000-0), 0 for the beginning, or $ for new events only"
    )


def read(
    run_id: str | None = None,
    since: str = START,
    *,
    types: Iterable[str] | None = None,
    settings: Settings | None = None,
) -> Iterator[Event]:
    """The events stored after ``since``, oldest first, without waiting for new ones.

    ``run_id=None`` reads the global stream (every run).

    Raises (at the call, not at the first ``next``):
        RunNotFound: the run never existed or has expired.
        InvalidOperation: ``since`` is not an event id.
        BackendUnavailable: Redis did not answer.
    """
    store = _open(run_id, settings)
    return _read(store, run_id, _resolve(store, run_id, check_since(since)), _types(types))


def _read(
    store: RunStore, run_id: str | None, last: str, wanted: frozenset[str] | None
) -> Iterator[Event]:
    if run_id is None:  # one merge of every stream, each read a page at a time as it goes
        merged = store.global_events(since=last)
        while (entry := _guard(lambda: next(merged, None))) is not None:
            event = Event.from_entry(*entry)
            if wanted is None or event.type in wanted:
                yield event
        return
    while True:
        page = _guard(partial(store.events, run_id, since=last, count=_PAGE))
        for entry_id, fields in page:
            last = entry_id
            event = Event.from_entry(entry_id, fields)
            if wanted is None or event.type in wanted:
                yield event
        if len(page) < _PAGE:
            return


def follow(
    run_id: str | None = None,
    since: str = START,
    *,
    types: Iterable[str] | None = None,
    timeout: float | None = None,
    settings: Settings | None = None,
    on_reconnect: Callable[[str], None] | None = None,
) -> Iterator[Event]:
    """The events after ``since``, then new ones as they are written (blocking, no polling).

    Following one run ends after its final event (``workflow_succeeded`` and friends);
    following the global stream goes on until ``timeout`` seconds have passed, if given.
    ``since=LATEST`` is pinned to the newest event when ``follow`` is called. Raises like
    ``read``; once following, a lost connection is retried for
    ``RUNBOOK_CLIENT_RECONNECT_SECONDS`` and the stream resumed after the last event
    (``on_reconnect`` is told; default: a log warning).

    Example::

        for event in events.follow(types={"step_failed"}):
            page_someone(event.run_id, event.step, event.exit_code)
    """

    seconds = (settings or get_settings()).client_reconnect_seconds
    until = None if timeout is None else time.monotonic() + timeout
    patience = Reconnector(seconds, "following events", on_reconnect, until=until)
    store = _open(run_id, settings)  # unreachable at the start: BackendUnavailable at once
    last = _resolve(store, run_id, check_since(since))  # pinned now, before any event is missed
    return _follow(store, run_id, last, _types(types), timeout, patience)


def _follow(
    store: RunStore,
    run_id: str | None,
    last: str,
    wanted: frozenset[str] | None,
    timeout: float | None,
    patience: Reconnector,
) -> Iterator[Event]:
    deadline = None if timeout is None else time.monotonic() + timeout
    block_ms = 1000 if timeout is None else max(1, min(1000, int(timeout * 1000)))
    stream = resume_on_loss(
        lambda after: store.follow_events(run_id, since=after, block_ms=block_ms),
        last,
        patience,
    )
    while True:
        try:
            entry_id, fields = _guard(lambda: next(stream))
        except BackendUnavailable:
            if deadline is not None and time.monotonic() >= deadline:
                return  # reconnecting ran into the timeout: as if no event came
            raise
        if entry_id:
            event = Event.from_entry(entry_id, fields)
            if wanted is None or event.type in wanted:
                yield event
            if run_id and event.ends_run:
                return
        elif run_id and _guard(lambda: patience.call(lambda: store.run_status(run_id))) in (
            _ENDED_OR_GONE
        ):
            return  # nothing more will be written (or the run expired meanwhile)
        if deadline is not None and time.monotonic() >= deadline:
            return


_ENDED_OR_GONE = frozenset({None, *TERMINAL_RUN_STATUSES})


def _open(run_id: str | None, settings: Settings | None) -> RunStore:

    s = settings or get_settings()
    store = RunStore(get_client(s), s.prefix, s.retention)
    if run_id is not None and _guard(lambda: store.run_status(run_id)) is None:
        raise RunNotFound(run_id)
    return store


def _resolve(store: RunStore, run_id: str | None, since: str) -> str:
    """Pin ``$`` to the current last id, so no event slips between two blocking reads."""
    if since != LATEST:
        return since

    return _guard(lambda: store.newest_event_id(run_id))


def _types(types: Iterable[str] | None) -> frozenset[str] | None:
    return None if types is None else frozenset(str(t) for t in types)


_T = TypeVar("_T")


def _guard(call: Callable[[], _T]) -> _T:
    """Run one Redis call; a lost connection becomes BackendUnavailable."""
    try:
        return call()
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read events from Redis: {redact(str(exc))}") from exc


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None
