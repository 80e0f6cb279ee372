"""The asyncio side of the Python API: submit, wait and follow events without a thread.

Waiting and following use redis-py's asyncio client, blocking on the run's end stream or
event stream (XREAD BLOCK), so an event loop serves any number of waits at no polling cost.
Publishing a run goes through Celery, which has no asyncio path: ``api.asubmit`` runs
``submit`` in a thread (``asyncio.to_thread``), and so do the short synchronous reads of a
final record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from ..core.errors import BackendUnavailable, RunFailed, RunNotFound
from ..core.settings import Settings, redis_connection_options
from ..plan.runrecord import RunRecord
from ..store.codec import read_reply
from ..store.events import START, TERMINAL_RUN_STATUSES, Event, check_since
from ..store.keys import Keys
from ..store.redisconn import redact


class FollowedRun(Protocol):
    """What waiting and following need of a ``Run`` (``api.Run`` is one): this module sits
    below ``api``, which calls it from ``Run.wait_async()`` and ``Run.events_async()``."""

    @property
    def id(self) -> str: ...
    @property
    def settings(self) -> Settings: ...
    def status(self) -> RunRecord: ...
    def wait_timeout_error(self, timeout: float) -> BaseException: ...
    def _ended(self) -> bool: ...


BLOCK_MS = 1000  # longest wait before checking whether the run ended unseen (trimmed stream)


def async_client(settings: Settings) -> aioredis.Redis:
    """A client of its own per follow: a pool belongs to the event loop that made it, and
    a blocking read holds its connection anyway. Closed when the follow ends."""
    return aioredis.Redis.from_url(settings.redis_url, **redis_connection_options())


async def follow_events(
    run: FollowedRun, since: str = START, types: Iterable[str] | None = None
) -> AsyncIterator[Event]:
    """The run's events after ``since``, then live ones, ending after the run's final event.

    Raises:
        RunNotFound: the run never existed or has expired.
        InvalidOperation: ``since`` is not an event id.
        BackendUnavailable: Redis did not answer.
    """
    wanted = None if types is None else frozenset(str(t) for t in types)
    keys = Keys(run.settings.prefix)
    stream, run_key = keys.run_events(run.id), keys.run(run.id)
    last = check_since(since)
    r = async_client(run.settings)
    try:
        if await r.hget(run_key, "status") is None:
            raise RunNotFound(run.id)
        if last == "$":  # pinned now, so no event slips between two reads
            newest = await r.xrevrange(stream, count=1)
            last = _s(newest[0][0]) if newest else START
        while True:
            resp = read_reply(await r.xread({stream: last}, block=BLOCK_MS, count=500))
            if not resp:  # nothing new: the run may have ended with its stream trimmed
                status = _s(await r.hget(run_key, "status"))
                if status is None or status in TERMINAL_RUN_STATUSES:
                    return
                continue
            for _key, entries in resp:
                for entry_id, fields in entries:
                    last = _s(entry_id)
                    event = Event.from_entry(last, {_s(k): _s(v) for k, v in fields.items()})
                    if wanted is None or event.type in wanted:
                        yield event
                    if event.ends_run:
                        return
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read events from Redis: {redact(str(exc))}") from exc
    finally:
        await r.aclose()


async def wait(
    run: FollowedRun, timeout: float | None = None, *, raise_on_failure: bool = False
) -> RunRecord:
    """Until the run ends, then its final record; ``WaitTimeout`` after ``timeout`` seconds
    (the run goes on). A cancelled wait leaves the run alone, like a timed-out one."""
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    try:
        async with asyncio.timeout_at(None if deadline is None else _loop_time(deadline)):
            await _until_ended(run)
    except TimeoutError:
        if not await asyncio.to_thread(run._ended):
            raise await asyncio.to_thread(run.wait_timeout_error, timeout or 0) from None
    record = await asyncio.to_thread(run.status)
    if raise_on_failure and not record.succeeded:
        raise RunFailed(record)
    return record


async def _until_ended(run: FollowedRun) -> None:
    """Block on the run's end stream (one entry, written when the run ends), so the wait
    wakes once; every ``BLOCK_MS`` the run's status is read in case it ended without one."""
    keys = Keys(run.settings.prefix)
    end, run_key = keys.run_ended(run.id), keys.run(run.id)
    r = async_client(run.settings)
    try:
        if await r.hget(run_key, "status") is None:
            raise RunNotFound(run.id)
        while not read_reply(await r.xread({end: "0-0"}, block=BLOCK_MS, count=1)):
            status = _s(await r.hget(run_key, "status"))
            if status is None or status in TERMINAL_RUN_STATUSES:
                return
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read run from Redis: {redact(str(exc))}") from exc
    finally:
        await r.aclose()


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
