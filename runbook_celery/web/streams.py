"""Server-sent events: a run's events (page and API) and a step's log lines, live.

Each stream waits on Redis with XREAD BLOCK in a thread of its own pool, never on the
IOLoop, and wakes within ``BLOCK_MS`` to send a keep-alive, which is also how a closed
connection is noticed. Event ids are Redis Stream ids, so a client that reconnects with
``Last-Event-ID`` (EventSource does it by itself) resumes exactly after the last event
it saw. A stream ends with ``event: end`` once the run (or the step) has ended and
everything before that is sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import tornado.web
from tornado.iostream import StreamClosedError

from ..core.errors import InvalidOperation, RunNotFound
from ..store.codec import read_reply
from ..store.events import TERMINAL_EVENTS, TERMINAL_RUN_STATUSES, Event, StepStatus, check_since
from ..store.redisconn import BACKEND_ERRORS, describe_backend_error
from .api import ApiHandler
from .base import RunbookHandler
from .view import printable

MAX_STREAMS = 64  # open streams per Flower process; more get 503 (EventSource retries)
BLOCK_MS = 10_000
PAGE = 500
LOG_BACKLOG = 2000  # lines of a step's log sent first; the API/CLI have them all
_POOL = ThreadPoolExecutor(MAX_STREAMS, thread_name_prefix="runbook-sse")

Entries = list[tuple[str, dict[str, str]]]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> Entries:
    return [(_s(eid), {_s(k): _s(v) for k, v in fields.items()}) for eid, fields in raw]


class StreamMixin(RunbookHandler):
    """Opening, writing and closing an event stream; counts open streams."""

    open_streams: ClassVar[int] = 0
    closed = False

    def resume_point(self) -> str:
        since = self.request.headers.get("Last-Event-ID") or self.get_query_argument("since", "0")
        try:
            return check_since(since)
        except InvalidOperation as exc:
            raise tornado.web.HTTPError(400, "%s", str(exc)) from None

    def start_stream(self) -> None:
        if StreamMixin.open_streams >= MAX_STREAMS:
            self.set_header("Retry-After", "5")
            raise tornado.web.HTTPError(503, "too many live streams open; retry later")
        StreamMixin.open_streams += 1
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # no proxy buffering
        self.write("retry: 2000\n\n")

    def on_connection_close(self) -> None:
        self.closed = True

    def send(
        self, data: Mapping[str, Any], *, eid: str | None = None, name: str | None = None
    ) -> None:
        head = (f"id: {eid}\n" if eid else "") + (f"event: {name}\n" if name else "")
        self.write(f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n")

    async def read(self, fn: Any, *args: Any) -> Any:
        """A blocking Redis read in the streams' pool; Redis down is a 503, not a 500."""
        try:
            return await asyncio.get_running_loop().run_in_executor(_POOL, fn, *args)
        except BACKEND_ERRORS as exc:
            raise tornado.web.HTTPError(503, "%s", describe_backend_error(exc)) from None

    async def pump(self, prelude: Callable[[], Awaitable[None]] | None = None) -> None:
        """Send ``prelude``, then until ``next_batch`` says the stream is over or the client
        goes away; the open-streams count is given back whatever happens."""
        try:
            if prelude is not None:
                await prelude()
            while not self.closed:
                done = await self.next_batch()
                await self.flush()
                if done:
                    self.send({}, name="end")
                    await self.flush()
                    break
        except (StreamClosedError, tornado.web.HTTPError):
            pass  # the client left, or Redis did: EventSource reconnects and resumes
        finally:
            StreamMixin.open_streams -= 1
        if not self.closed:
            self.finish()

    async def next_batch(self) -> bool:
        raise NotImplementedError


class RunEvents(StreamMixin):
    """``GET .../runs/<id>/events``: the run's events, then new ones as they happen."""

    named: ClassVar[bool] = True  # ``event: <type>`` lines; the page listens to messages

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        self.last = self.resume_point()
        store = self.ctx.store
        self.key = store.keys.run_events(run_id)
        self.run_id = run_id
        status = await self.read(store.run_status, run_id)
        if status is None:
            raise tornado.web.HTTPError(404, "run %r not found (never existed, or expired)", run_id)
        if self.last == "$":
            newest = await self.read(lambda: store.r.xrevrange(self.key, count=1))
            self.last = _s(newest[0][0]) if newest else "0-0"
        self.ended = status in TERMINAL_RUN_STATUSES
        self.start_stream()
        await self.pump()

    def _xread(self, block: int | None) -> Entries:
        resp = self.ctx.store.r.xread({self.key: self.last}, block=block, count=PAGE)
        streams = read_reply(resp)
        return _entries(streams[0][1]) if streams else []

    async def next_batch(self) -> bool:
        entries = await self.read(self._xread, None if self.ended else BLOCK_MS)
        for eid, fields in entries:
            self.last = eid
            event = Event.from_entry(eid, fields)
            self.send(event.to_dict(), eid=eid, name=event.type if self.named else None)
            if event.type in TERMINAL_EVENTS:
                return True
        if entries:
            return False
        if self.ended:
            return True
        self.write(": keep-alive\n\n")
        status = await self.read(self.ctx.store.run_status, self.run_id)
        self.ended = status is None or status in TERMINAL_RUN_STATUSES
        return False


class PageEvents(RunEvents):
    """The run page's feed: Flower's page rule, plain messages."""

    named = False


class ApiEvents(RunEvents, ApiHandler):
    """``GET /api/runs/<id>/events``: Flower's API rule, named events."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        ApiHandler.write_error(self, status_code, **kwargs)


class StepLog(StreamMixin):
    """``GET /runs/<id>/logs/<step>``: the step's last lines, then new ones while it runs."""

    @tornado.web.authenticated
    async def get(self, run_id: str, step_id: str) -> None:
        store = self.ctx.store
        record = await self.read(_record_or_none, store, run_id)
        if record is None:
            raise tornado.web.HTTPError(404, "run %r not found (never existed, or expired)", run_id)
        if step_id not in record.steps:
            raise tornado.web.HTTPError(404, "run %s has no step %r", run_id, step_id)
        self.run_id, self.step_id = run_id, step_id
        self.key = store.keys.logs(run_id, step_id)
        self.last = self.resume_point()
        self.ended = StepStatus(record.steps[step_id].status).terminal
        self.start_stream()
        await self.pump(self.backlog if self.last in ("0", "0-0") else None)

    async def backlog(self) -> None:
        """The newest ``LOG_BACKLOG`` lines (a step keeps up to RUNBOOK_LOG_LINES)."""
        store = self.ctx.store
        newest = await self.read(lambda: store.r.xrevrange(self.key, count=LOG_BACKLOG + 1))
        entries = _entries(reversed(newest))
        if len(entries) > LOG_BACKLOG:
            entries = entries[1:]
            self.send(
                {"note": f"earlier lines not shown; the last {LOG_BACKLOG} follow"}, name="note"
            )
        for eid, fields in entries:
            self.last = eid
            self.send({"s": fields.get("s", "out"), "l": printable(fields.get("l", ""))}, eid=eid)

    def _xread(self, block: int | None) -> Entries:
        resp = self.ctx.store.r.xread({self.key: self.last}, block=block, count=1000)
        streams = read_reply(resp)
        return _entries(streams[0][1]) if streams else []

    async def next_batch(self) -> bool:
        entries = await self.read(self._xread, None if self.ended else BLOCK_MS // 2)
        for eid, fields in entries:
            self.last = eid
            self.send({"s": fields.get("s", "out"), "l": printable(fields.get("l", ""))}, eid=eid)
        if entries:
            return False
        if self.ended:
            return True
        self.write(": keep-alive\n\n")
        raw = await self.read(
            self.ctx.store.r.hget, self.ctx.store.keys.step(self.run_id, self.step_id), "status"
        )
        self.ended = raw is None or StepStatus(_s(raw)).terminal
        return False


def _record_or_none(store: Any, run_id: str) -> Any:
    try:
        return store.get_run(run_id)
    except RunNotFound:
        return None
