"""Run history: recent runs, newest first, filtered by workflow and status.

Runs index themselves in the sorted set ``keys.runs_index`` (scored by creation time)
and their own keys expire ``RUNBOOK_RETENTION`` seconds after they finish. A sorted-set
member cannot expire, so listing drops the index entries whose run hash has gone, and
trims global events older than the retention period: an expired run then leaves nothing
behind in the index, its logs or the event streams.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from ..core.errors import BackendUnavailable
from . import RunStore
from .events import TERMINAL_RUN_STATUSES
from .redisconn import redact

DEFAULT_LIMIT = 20
PAGE = 200  # run ids read per round trip
_FIELDS = ("id", "workflow", "status", "params", "created_at", "started_at", "finished_at")


@dataclass(frozen=True)
class RunSummary:
    """One line of history: what ran, with which params, when, how long, how it ended."""

    id: str
    workflow: str
    status: str
    params: dict[str, Any]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_runs(
    store: RunStore,
    *,
    workflow: str | None = None,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    now: datetime | None = None,
) -> list[RunSummary]:
    """The most recent runs first, at most ``limit``, pruning the index of expired runs.

    Raises:
        BackendUnavailable: Redis did not answer.
    """
    out: list[RunSummary] = []
    try:
        for summary in _scan(store, now or datetime.now(UTC)):
            if workflow is not None and summary.workflow != workflow:
                continue
            if status is not None and summary.status != status:
                continue
            out.append(summary)
            if len(out) >= limit:
                break
        trim_global_events(store)
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read run history: {redact(str(exc))}") from exc
    return out


@dataclass(frozen=True)
class RunPage:
    """One page of history and how many runs match in all (for a pager and a count)."""

    total: int
    offset: int
    runs: list[RunSummary]


FILTER_CHUNK = 1000  # runs whose workflow and status are read per round trip when filtering


class EndedRuns:
    """Workflow and status of runs that have ended, which never change again.

    Filtering the history reads the workflow and status of every indexed run; with this
    cache (one per long-lived process, e.g. Flower) it reads only the runs still going or
    not seen before, so filtering 10,000 runs costs one ZREVRANGE and a few reads. An entry
    is trusted until its run's retention ends, then read again (and pruned when gone).
    """

    def __init__(self) -> None:
        self._runs: dict[str, tuple[str, str, float]] = {}  # id -> workflow, status, expires
        self._lock = threading.Lock()

    def known(self, run_id: str, now: float) -> tuple[str, str] | None:
        entry = self._runs.get(run_id)
        return (entry[0], entry[1]) if entry and entry[2] > now else None

    def remember(self, run_id: str, workflow: str, status: str, expires: float) -> None:
        with self._lock:
            self._runs[run_id] = (workflow, status, expires)

    def keep_only(self, run_ids: set[str]) -> None:
        with self._lock:
            self._runs = {k: v for k, v in self._runs.items() if k in run_ids}


def page_runs(
    store: RunStore,
    *,
    workflow: str | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    now: datetime | None = None,
    ended: EndedRuns | None = None,
) -> RunPage:
    """Runs ``offset`` to ``offset + limit`` of the history, newest first, and the total.

    Without a filter this reads only the page (the index gives the order and the count).
    A filter reads the workflow and status of every indexed run (only of the runs still
    going, with an ``EndedRuns`` cache), a thousand per round trip, then the page.
    Expired runs found are dropped from the index.

    Raises:
        BackendUnavailable: Redis did not answer.
    """
    now = now or datetime.now(UTC)
    try:
        if workflow is None and status is None:
            total = int(store.r.zcard(store.keys.runs_index))
            ids = [
                _s(i) for i in store.r.zrevrange(store.keys.runs_index, offset, offset + limit - 1)
            ]
        else:
            matching = _matching(store, workflow, status, now, ended or EndedRuns())
            total = len(matching)
            ids = matching[offset : offset + limit]
        found = _summaries(store, ids, now)
        total -= len(ids) - len(found)  # expired meanwhile
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read run history: {redact(str(exc))}") from exc
    return RunPage(total=max(total, len(found)), offset=offset, runs=found)


def _matching(
    store: RunStore, workflow: str | None, status: str | None, now: datetime, ended: EndedRuns
) -> list[str]:
    """Ids of the indexed runs of this workflow and status, newest first."""
    ids = [_s(i) for i in store.r.zrevrange(store.keys.runs_index, 0, -1)]
    clock = now.timestamp()
    known = {run_id: ended.known(run_id, clock) for run_id in ids}
    unknown = [run_id for run_id, got in known.items() if got is None]
    expired: list[str] = []
    for start in range(0, len(unknown), FILTER_CHUNK):
        chunk = unknown[start : start + FILTER_CHUNK]
        pipe = store.r.pipeline(transaction=False)
        for run_id in chunk:
            pipe.hmget(store.keys.run(run_id), ("workflow", "status", "finished_at"))
        for run_id, (wf, st, fin) in zip(chunk, pipe.execute(), strict=True):
            if wf is None:
                expired.append(run_id)
                continue
            known[run_id] = (_s(wf), _s(st))
            finished = _parse(_s(fin)) if fin else None
            if finished is not None and _s(st) in TERMINAL_RUN_STATUSES:
                ended.remember(run_id, _s(wf), _s(st), finished.timestamp() + store.retention)
    if expired:
        _forget(store, expired)
    ended.keep_only(set(ids))
    return [
        run_id
        for run_id in ids
        if (got := known.get(run_id)) is not None
        and (workflow is None or got[0] == workflow)
        and (status is None or got[1] == status)
    ]


def _summaries(store: RunStore, ids: list[str], now: datetime) -> list[RunSummary]:
    """The summaries of these runs in this order; expired ones are dropped from the index."""
    if not ids:
        return []
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(store.keys.run(run_id), _FIELDS)
    out, expired = [], []
    for run_id, values in zip(ids, pipe.execute(), strict=True):
        fields = {f: _s(v) for f, v in zip(_FIELDS, values, strict=True)}
        if fields["id"] is None:
            expired.append(run_id)
        else:
            out.append(_summary(fields, now))
    if expired:
        _forget(store, expired)
    return out


def trim_global_events(store: RunStore) -> None:
    """Drop global events older than the retention period (their runs have expired), and
    the runs that ended before it from those the global reader merges in."""
    oldest_ms = int((time.time() - store.retention) * 1000)
    pipe = store.r.pipeline(transaction=False)
    pipe.xtrim(store.keys.global_events, minid=f"{oldest_ms}-0", approximate=True)
    pipe.zremrangebyscore(store.keys.event_runs, "-inf", f"({oldest_ms}")
    pipe.execute()


def _forget(store: RunStore, expired: list[str]) -> None:
    """Take runs that have expired out of the index and out of the global reader's runs."""
    pipe = store.r.pipeline(transaction=False)
    pipe.zrem(store.keys.runs_index, *expired)
    pipe.zrem(store.keys.event_runs, *expired)
    pipe.execute()


def _scan(store: RunStore, now: datetime) -> Iterator[RunSummary]:
    """Walk the index newest first, a page at a time, yielding runs that still exist."""
    start = 0
    seen: set[str] = set()  # a run created meanwhile shifts the ranks by one
    while True:
        ids = [_s(i) for i in store.r.zrevrange(store.keys.runs_index, start, start + PAGE - 1)]
        if not ids:
            return
        pipe = store.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(store.keys.run(run_id), _FIELDS)
        rows = pipe.execute()
        expired = []
        for run_id, values in zip(ids, rows, strict=True):
            fields = {f: _s(v) for f, v in zip(_FIELDS, values, strict=True)}
            if fields["id"] is None:
                expired.append(run_id)
            elif run_id not in seen:
                seen.add(run_id)
                yield _summary(fields, now)
        if expired:
            _forget(store, expired)
        start += PAGE - len(expired)
        if len(ids) < PAGE:
            return


def _summary(fields: dict[str, str | None], now: datetime) -> RunSummary:
    started = _parse(fields["started_at"])
    finished = _parse(fields["finished_at"])
    end = finished or now
    duration = None if started is None else round((end - started).total_seconds(), 3)
    return RunSummary(
        id=fields["id"] or "",
        workflow=fields["workflow"] or "",
        status=fields["status"] or "pending",
        params=json.loads(fields["params"] or "{}"),
        created_at=fields["created_at"],
        started_at=fields["started_at"],
        finished_at=fields["finished_at"],
        duration_s=duration,
    )


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
