"""Reading the event streams (the scripts write them, see lua/prelude.lua ``emit``; the
global stream as readers see it is merged with the run streams in globalevents.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .base import StoreBase
from .codec import _decode, _s, range_reply, read_reply
from .globalevents import Entry, GlobalFollower, id_key, newest_id, read_merged


class EventLog(StoreBase):
    def await_end(self, run_id: str, block_ms: int) -> str | None:
        """The run's final status once it has ended, else ``None`` after ``block_ms``.

        Blocks on the run's end stream, which ``finalize`` writes once, so a waiter wakes
        once per run rather than once per event."""
        resp = read_reply(self.r.xread({self.keys.run_ended(run_id): "0-0"}, block=block_ms))
        for _, entries in resp or ():
            for _eid, fields in entries:
                return _decode(fields).get("status", "")
        return None

    def events(
        self, run_id: str | None = None, since: str = "0-0", count: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        """The run's events after ``since`` (``None``: every run's, globalevents.py), at most
        ``count`` of them (and any that share the last one's id, from other runs)."""
        if run_id is None:
            return _first(read_merged(self.r, self.keys, since), count)
        key = self.keys.run_events(run_id)
        entries = self.r.xrange(key, min=f"({since}" if since != "0-0" else "-", count=count)
        return [(_s(eid), _decode(fields)) for eid, fields in range_reply(entries)]

    def global_events(self, since: str = "0-0") -> Iterator[tuple[str, dict[str, str]]]:
        """Every run's events after ``since``, oldest first, read lazily (globalevents.py)."""
        return read_merged(self.r, self.keys, since)

    def newest_event_id(self, run_id: str | None = None) -> str:
        """The id of the newest event of the run (``None``: of every run), ``0-0`` if none."""
        if run_id is None:
            return newest_id(self.r, self.keys)
        newest = range_reply(self.r.xrevrange(self.keys.run_events(run_id), count=1))
        return _s(newest[0][0]) if newest else "0-0"

    def follow_events(
        self, run_id: str | None = None, since: str = "0-0", block_ms: int = 5000
    ) -> Iterator[tuple[str, dict[str, str]]]:
        """Events after ``since``, blocking for new ones (XREAD BLOCK: no polling floor)."""
        if run_id is None:
            follower = GlobalFollower(self.r, self.keys, since)
            while True:
                batch = follower.read(block_ms)
                yield from batch or [("", {})]  # nothing: a heartbeat, for deadlines
        key = self.keys.run_events(run_id)
        last = since
        while True:
            resp = read_reply(self.r.xread({key: last}, block=block_ms, count=500))
            if not resp:
                yield ("", {})  # heartbeat: lets the caller check deadlines
                continue
            for _, entries in resp:
                for eid, fields in entries:
                    last = _s(eid)
                    yield last, _decode(fields)


def _first(entries: Iterable[Entry], count: int | None) -> list[Entry]:
    """The first ``count`` entries, and those after them with the same id (so that reading
    on after the last id neither repeats nor skips one)."""
    out: list[Entry] = []
    for entry in entries:
        if count is not None and len(out) >= count and id_key(entry[0]) != id_key(out[-1][0]):
            break
        out.append(entry)
    return out
