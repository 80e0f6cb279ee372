"""The global event stream as readers see it: ``P:events`` merged with the run streams.

A step's own path (``step_started``, ``step_succeeded``: ``RUN_STREAM_ONLY_EVENTS``) is
written to its run's stream only, one XADD per transition; every other event also goes to
``P:events`` (prelude.lua ``emit``). Readers of the global stream (``events``/``watch``
without a run, ``events.read()``/``follow()``, the reliability tracker) get every event of
every run, merged in stream-id order, as when every event was written to both streams. The
notifiers' consumer group reads ``P:events`` itself: every event a notification can be
about is there.

Which runs are merged: ``keys.event_runs`` holds every run recorded since it existed,
scored by when it ended (``+inf`` while it goes on; finalize scores it), so the runs that
may hold events after ``since`` are one ZRANGEBYSCORE. The score is Redis' clock, as
stream ids are; ``SLACK_MS`` covers an XADD id a little later than the script's clock
reading. A merged run's events are all read from its own stream, which holds each of them
in the order the scripts wrote them (its copies in ``P:events`` are passed over: a script
writes both copies in the same millisecond, so the two streams' ids cannot order them);
``P:events`` gives the events of the runs that are not merged (recorded before
``event_runs`` existed, or whose stream has expired: a notification of such a run is
written to ``P:events`` only).

One id space over several streams: an entry is "after ``since``" when its id is greater,
whichever stream holds it, and entries with equal ids in two streams come out together
(the global one first, then by run id), so resuming after a printed id neither repeats
nor skips what was read. (An entry written to one stream in the same millisecond as a
newer one already read from another would sort before it; a follower reads each stream
with its own cursor and does not lose it, a reader resuming after an id could.)
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from typing import Any, cast

import redis

from ..definition.vocabulary import TERMINAL_EVENTS
from .codec import _decode, _s, range_reply, read_reply
from .keys import Keys

Entry = tuple[str, dict[str, str]]
PAGE = 500
SLACK_MS = 60_000
START = "0-0"


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``<ms>`` alone is ``<ms>-0``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(since: str) -> str:
    return "-" if since == START else f"({since}"


def runs_since(r: redis.Redis, keys: Keys, since: str) -> dict[str, bool]:
    """The runs merged in a read after ``since``: those going on or ended since whose stream
    is there (an expired run's events are in ``P:events`` only), by id, each with whether it
    has ended."""
    low = 0 if since == START else max(0, id_key(since)[0] - SLACK_MS)
    found = cast(
        "list[tuple[bytes, float]]",
        r.zrangebyscore(keys.event_runs, low, "+inf", withscores=True),
    )
    runs = {_s(m): not math.isinf(score) for m, score in sorted(found)}
    pipe = r.pipeline(transaction=False)
    for run in runs:
        pipe.exists(keys.run_events(run))
    there = pipe.execute()
    return {run: ended for (run, ended), ok in zip(runs.items(), there, strict=True) if ok}


class _Source:
    def __init__(self, key: str) -> None:
        self.key = key
        self.buffer: deque[Entry] = deque()
        self.more = True  # the last page was full: there may be more after it

    def fill(self, reply: object, page: int) -> None:
        entries = [(_s(eid), _decode(fields)) for eid, fields in range_reply(reply)]
        self.buffer.extend(entries)
        self.more = len(entries) >= page


def read_merged(
    r: redis.Redis, keys: Keys, since: str = START, page: int = PAGE
) -> Iterator[Entry]:
    """Every event after ``since``, oldest first (ties: the global stream's first, then by
    run id), reading each stream a page at a time as the merge needs it."""
    merged = runs_since(r, keys, since)
    sources = [_Source(keys.global_events)]
    sources += [_Source(keys.run_events(run)) for run in merged]
    pipe = r.pipeline(transaction=False)
    for source in sources:
        pipe.xrange(source.key, min=_after(since), count=page)
    for source, reply in zip(sources, pipe.execute(), strict=True):
        source.fill(reply, page)
    heap = [(id_key(s.buffer[0][0]), i) for i, s in enumerate(sources) if s.buffer]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        source = sources[i]
        entry_id, fields = source.buffer.popleft()
        if i > 0 or fields.get("run_id") not in merged:
            yield entry_id, fields
        if not source.buffer and source.more:
            source.fill(r.xrange(source.key, min=f"({entry_id}", count=page), page)
        if source.buffer:
            heapq.heappush(heap, (id_key(source.buffer[0][0]), i))


def newest_id(r: redis.Redis, keys: Keys) -> str:
    """The id of the newest event a global reader would see now (``START`` when none): the
    newest of ``P:events`` and of the streams of the runs going on or ended about then (a
    run's last entries may have ids after its copies in ``P:events``)."""
    last = range_reply(r.xrevrange(keys.global_events, count=1))
    newest = [_s(last[0][0])] if last else []
    pipe = r.pipeline(transaction=False)
    for run in runs_since(r, keys, newest[0] if newest else START):
        pipe.xrevrange(keys.run_events(run), count=1)
    newest += [_s(reply[0][0]) for reply in pipe.execute() if reply]
    return max(newest, key=id_key, default=START)


class GlobalFollower:
    """Follows the global stream and the streams of the merged runs that go on, each with
    its own cursor, in one blocking XREAD; a run is read from its stream from its first
    global event (or from the start, when it goes on already) until its final one."""

    def __init__(self, r: redis.Redis, keys: Keys, since: str) -> None:
        self.r, self.keys, self.since = r, keys, since
        self.cursors: dict[str, str] = {keys.global_events: since}
        self.merged: set[str] = set()  # runs read from their own streams
        self.unmerged: set[str] = set()  # runs whose events come from P:events
        self.ending: set[str] = set()  # run streams to leave once read up to their end
        self.left: dict[str, str] = {}  # run streams no longer read, and their cursors
        for run, ended in runs_since(r, keys, since).items():
            self.merged.add(run)
            self.cursors[keys.run_events(run)] = since
            if ended:
                self.ending.add(keys.run_events(run))

    def read(self, block_ms: int, count: int = PAGE) -> list[Entry]:
        """The next events in id order (waiting up to ``block_ms``); [] when none came."""
        streams: dict[Any, Any] = dict(self.cursors)  # redis-py's key type is invariant
        reply = read_reply(self.r.xread(streams, block=block_ms, count=count))
        batches = {_s(k): v for k, v in reply}
        # a stream cut at ``count`` is in order only up to its last entry: the rest waits
        cut = min((id_key(_s(v[-1][0])) for v in batches.values() if len(v) >= count), default=None)
        out: list[tuple[tuple[int, int], int, int, Entry]] = []
        for order, (key, entries) in enumerate(sorted(batches.items())):
            is_global = key == self.keys.global_events
            for position, (eid, raw) in enumerate(entries):
                entry_id = _s(eid)
                if cut is not None and id_key(entry_id) > cut:
                    break
                self.cursors[key] = entry_id
                fields = _decode(raw)
                if not is_global or not self._merged(fields):
                    rank = -1 if is_global else order
                    out.append((id_key(entry_id), rank, position, (entry_id, fields)))
        for key in list(self.ending):
            if key in streams and cut is None and len(batches.get(key, ())) < count:
                self.ending.discard(key)  # read up to its end: no more to merge
                self.left[key] = self.cursors.pop(key)
        out.sort(key=lambda item: item[:3])
        return [item[3] for item in out]

    def _merged(self, fields: dict[str, str]) -> bool:
        """Whether this global entry's run is read from its own stream (which holds the
        entry too); notes a run new to the follower, and a run's end."""
        run_id = fields.get("run_id")
        if not run_id or run_id in self.unmerged:
            return False
        key = self.keys.run_events(run_id)
        if run_id not in self.merged:
            pipe = self.r.pipeline(transaction=False)
            pipe.zscore(self.keys.event_runs, run_id)
            pipe.exists(key)
            score, there = pipe.execute()
            if score is None or not there:
                self.unmerged.add(run_id)
                return False
            self.merged.add(run_id)
        if key not in self.cursors:
            if key in self.left:  # an ended run has news (a notification, a retry)
                self.ending.add(key)  # read what it added, then leave it again
            self.cursors[key] = self.left.pop(key, self.since)
        if fields.get("type") in TERMINAL_EVENTS:
            self.ending.add(key)
        return True
