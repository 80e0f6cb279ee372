"""Reading the event streams (the scripts write them, see lua/prelude.lua ``emit``)."""

from __future__ import annotations

from collections.abc import Iterator

from .base import StoreBase
from .codec import _decode, _s, range_reply, read_reply


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
        key = self.keys.run_events(run_id) if run_id else self.keys.global_events
        entries = self.r.xrange(key, min=f"({since}" if since != "0-0" else "-", count=count)
        return [(_s(eid), _decode(fields)) for eid, fields in range_reply(entries)]

    def follow_events(
        self, run_id: str | None = None, since: str = "0-0", block_ms: int = 5000
    ) -> Iterator[tuple[str, dict[str, str]]]:
        """Events after ``since``, blocking for new ones (XREAD BLOCK: no polling floor)."""
        key = self.keys.run_events(run_id) if run_id else self.keys.global_events
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
