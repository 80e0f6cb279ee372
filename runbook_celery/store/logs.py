"""Reading a run's step logs: what is stored, or live while the steps run.

Each step's lines live in the capped Redis Stream ``keys.logs(run_id, step_id)`` that
``logsink.StepLogSink`` writes (fields ``s`` = out|err, ``l`` = the line). Stream ids are
timestamps, so lines of several steps are merged in the order they were written.
Following blocks on the log streams and the run's event stream in one XREAD, so a line
shows up as soon as it is stored and the reader stops as soon as the run ends.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import redis
from redis.typing import KeyT, StreamIdT

from ..core.errors import BackendUnavailable, InvalidOperation, RunNotFound
from . import RunStore
from .codec import range_reply, read_reply
from .events import TERMINAL_EVENTS, TERMINAL_RUN_STATUSES
from .reconnect import Reconnector
from .redisconn import redact

_R = TypeVar("_R")
PAGE = 1000  # entries per Redis round trip
BLOCK_MS = 1000  # longest wait before checking the run's status again


@dataclass(frozen=True)
class LogLine:
    """One line a step printed; ``stream`` is ``out`` or ``err``."""

    step: str
    stream: str
    text: str
    id: str


@dataclass(frozen=True)
class Gap:
    """Lines a step printed that are no longer stored: the per-step caps dropped them."""

    step: str
    dropped: int
    dropped_bytes: int = 0  # of their text, when the worker counted it (log_dropped_bytes)
    max_lines: int | None = None  # the worker's caps that dropped them, when it said
    max_bytes: int | None = None


LogItem = LogLine | Gap


class LogReader:
    """The logs of one run, of all its steps or of some.

    Raises:
        RunNotFound: the run never existed or has expired.
        InvalidOperation: a requested step is not part of the run.
    """

    def __init__(self, store: RunStore, run_id: str, steps: list[str] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.chosen = list(steps) if steps else None
        self.steps: list[str] = []
        self._rank: dict[str, int] = {}
        self._key: dict[str, str] = {}
        self._shown: dict[str, int] = {}
        self._reported: dict[str, int] = {}
        self._reported_bytes: dict[str, int] = {}
        with _redis_errors():
            known = self._discover()
        if not known:
            raise RunNotFound(run_id)
        unknown = [s for s in self.chosen or [] if s not in known]
        if unknown:
            raise InvalidOperation(
                f"run {run_id} has no step {unknown[0]!r}; its steps are {', '.join(known)}"
            )

    def _discover(self) -> list[str]:
        """The run's steps, each followed by its fan-out instances (``step[0]``...) if any.

        Instances appear while the run goes on, so following calls this again on events.
        Returns every known step; ``self.steps`` keeps the chosen ones and their instances.
        """
        top = self.store.step_ids(self.run_id)
        hashes = self.store.step_hashes(self.run_id, top) if top else {}
        known: list[str] = []
        for sid in top:
            known.append(sid)
            raw = hashes.get(sid, {}).get("instances")
            ids = json.loads(raw) if raw else []
            known += ids
            if self.chosen is None or sid in self.chosen:
                self._add(sid, *ids)
            else:
                self._add(*(i for i in ids if i in self.chosen))
        if self.chosen is not None:
            self._add(*(s for s in self.chosen if s in known))
        return known

    def _add(self, *steps: str) -> None:
        for step in steps:
            if step not in self._key:
                self.steps.append(step)
                self._rank[step] = len(self._rank)
                self._key[step] = self.store.keys.logs(self.run_id, step)
                self._shown[step] = 0
                self._reported[step] = 0
                self._reported_bytes[step] = 0

    # ------------------------------------------------------------------ reading

    def read(self) -> Iterator[LogItem]:
        """Every stored line of the chosen steps, oldest first, then any dropped-lines gaps."""
        with _redis_errors():
            yield from self._gaps(at_start=True)
            pages = [self._pages(s) for s in self.steps]
            for _key, item in heapq.merge(*pages):
                self._shown[item.step] += 1
                yield item
            yield from self._gaps()

    def _read(self, cursors: dict[KeyT, StreamIdT], block: int | None) -> object:
        return self.store.r.xread(cursors, block=block, count=PAGE)

    def _gaps_at_start(self) -> list[Gap]:
        return list(self._gaps(at_start=True))

    def follow(
        self, block_ms: int = BLOCK_MS, reconnector: Reconnector | None = None
    ) -> Iterator[LogItem]:
        """Stored lines, then new ones as they are written, until the run ends.

        With a ``reconnector``, a lost connection to Redis is retried for as long as it
        allows and reading resumes after the last line of each stream (its cursor).
        """
        call = reconnector.call if reconnector else _once
        with _redis_errors():
            yield from call(self._gaps_at_start)
            cursors: dict[KeyT, StreamIdT] = {self._key[s]: "0-0" for s in self.steps}
            events_key = self.store.keys.run_events(self.run_id)
            cursors[events_key] = "0-0"
            ended = call(self._status) in _ENDED
            while True:
                block = None if ended else block_ms
                resp = read_reply(call(partial(self._read, cursors, block)))
                lines: list[tuple[tuple[int, int, int], LogLine]] = []
                for raw_key, entries in resp:
                    key = _s(raw_key)
                    if entries:
                        cursors[key] = _s(entries[-1][0])
                    if key == events_key:
                        ended = ended or any(
                            _s(f.get(b"type", b"")) in TERMINAL_EVENTS for _, f in entries
                        )
                        for new in call(self._new_steps):
                            cursors[self._key[new]] = "0-0"
                        continue
                    step = self._step_of(key)
                    lines += [self._line(step, eid, fields) for eid, fields in entries]
                for _sort, line in sorted(lines, key=lambda pair: pair[0]):
                    self._shown[line.step] += 1
                    yield line
                if not resp:
                    if ended:
                        break  # drained everything written before the run's final event
                    status = call(self._status)
                    if status is None:
                        raise RunNotFound(self.run_id)  # expired while we followed it
                    ended = status in _ENDED
            yield from call(lambda: list(self._gaps()))

    def status(self, reconnector: Reconnector | None = None) -> str | None:
        """The run's status now (None once it has expired)."""
        with _redis_errors():
            return (reconnector.call if reconnector else _once)(self._status)

    def _status(self) -> str | None:
        return self.store.run_status(self.run_id)

    # ------------------------------------------------------------------ internals

    def _new_steps(self) -> list[str]:
        """Steps that appeared since the last look (instances of a fanned-out step)."""
        before = len(self.steps)
        self._discover()
        return self.steps[before:]

    def _pages(self, step: str) -> Iterator[tuple[tuple[int, int, int], LogLine]]:
        last = "-"
        while True:
            entries = range_reply(self.store.r.xrange(self._key[step], min=last, count=PAGE))
            for eid, fields in entries:
                yield self._line(step, eid, fields)
            if len(entries) < PAGE:
                return
            last = f"({_s(entries[-1][0])}"

    def _line(
        self, step: str, raw_id: bytes | str, fields: Mapping[bytes | str, bytes | str]
    ) -> tuple[tuple[int, int, int], LogLine]:
        eid = _s(raw_id)
        ms, _, seq = eid.partition("-")
        line = LogLine(step, _s(fields.get(b"s", b"out")), _s(fields.get(b"l", b"")), eid)
        return (int(ms), int(seq or 0), self._rank[step]), line

    def _step_of(self, key: str) -> str:
        for step, k in self._key.items():
            if k == key:
                return step
        raise KeyError(key)

    def _gaps(self, at_start: bool = False) -> Iterator[Gap]:
        """Lines written but not stored, shown or reported yet: the cap dropped them.

        At the start the lines still stored are about to be shown; at the end every line
        not shown was trimmed before this reader got to it.
        """
        for step in self.steps:
            added, stored = self._counts(step)
            missed = added - self._shown[step] - self._reported[step]
            if at_start:
                missed -= stored
            if missed > 0:
                step_key = self.store.keys.step(self.run_id, step)
                raw = self.store.r.hmget(
                    step_key, ["log_dropped_bytes", "log_max_lines", "log_max_bytes"]
                )
                dropped_bytes, max_lines, max_bytes = (int(v) if v else None for v in raw)
                missed_bytes = max(0, (dropped_bytes or 0) - self._reported_bytes[step])
                self._reported[step] += missed
                self._reported_bytes[step] += missed_bytes
                yield Gap(step, missed, missed_bytes, max_lines, max_bytes or None)

    def _counts(self, step: str) -> tuple[int, int]:
        """Lines ever appended to the step's stream, and lines it holds now."""
        try:
            info = self.store.r.xinfo_stream(self._key[step])
        except redis.ResponseError:
            return 0, 0  # the step has printed nothing (yet)
        stored = int(info.get("length", 0))
        if "entries-added" in info:
            return int(info["entries-added"]), stored
        # Redis < 7 has no counter; the log sink records it when the step's output closes
        raw = self.store.r.hget(self.store.keys.step(self.run_id, step), "log_lines")
        return (int(raw) if raw else stored), stored


_ENDED = TERMINAL_RUN_STATUSES  # skipped too: a run its concurrency group skipped


@contextmanager
def _redis_errors() -> Iterator[None]:

    try:
        yield
    except redis.RedisError as exc:
        raise BackendUnavailable(f"cannot read logs from Redis: {redact(str(exc))}") from exc


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _once(fn: Callable[[], _R]) -> _R:
    """Call ``fn`` without retrying (no reconnector given)."""
    return fn()
