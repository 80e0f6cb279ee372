"""Stream a running step's output lines into a capped Redis Stream, as they happen.

Lines are written at once when they come slowly and in batches when they come fast, so
a chatty step costs one round trip per batch, and a quiet step's line shows up at once.
A line buffered in a burst is written at the latest by the step's next supervision tick.

Two caps keep a step's log small: its last ``max_lines`` lines (RUNBOOK_LOG_LINES) and, of
those, as many of the newest as fit ``max_bytes`` (RUNBOOK_LOG_BYTES) of text. The sink
knows the size of every line it keeps, so it trims the stream to the count that fits in
the same round trip that adds the lines, and counts what it dropped in the step's hash
(``log_dropped_bytes``) for ``logs`` to report. The caps apply to each attempt's lines;
a retried step's earlier lines are the first to go when the stream is trimmed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import redis
from redis.typing import EncodableT, FieldT

from .keys import Keys

BATCH_SECONDS = 0.05  # lines arriving faster than this are batched
BATCH_LINES = 200


class StepLogSink:
    """Collects (stream, line) pairs from the runner and appends them to the step's log."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        run_id: str,
        step_id: str,
        max_lines: int,
        mask: Callable[[str], str] | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.client = client
        self.key = keys.logs(run_id, step_id)
        self.step_key = keys.step(run_id, step_id)
        self.max_lines = max_lines
        self.lock = threading.Lock()
        self.buffer: list[tuple[str, str]] = []
        self.last_flush = 0.0
        self.total = 0
        self.max_bytes = max_bytes
        self.sizes: deque[int] = deque()  # bytes of each line kept, oldest first
        self.kept_bytes = 0
        self.dropped = 0  # lines written, then trimmed by a cap
        self.dropped_bytes = 0
        self.broken = False
        self.mask = mask or (lambda text: text)

    def __call__(self, stream: str, line: str) -> None:
        with self.lock:
            self.buffer.append(("out" if stream == "stdout" else "err", self.mask(line)))
            self.total += 1
            now = time.monotonic()
            if now - self.last_flush >= BATCH_SECONDS or len(self.buffer) >= BATCH_LINES:
                self._flush_locked(now)

    def flush(self) -> None:
        with self.lock:
            if self.buffer:
                self._flush_locked(time.monotonic())

    def close(self) -> None:
        """Write what is left and record how many lines the step printed."""
        with self.lock:
            self._flush_locked(time.monotonic())
            if self.broken or self.total == 0:
                return  # nothing printed: nothing to count (saves a round trip per step)
            try:
                self.client.hset(
                    self.step_key, mapping={"log_lines": self.total, "log_dropped": self.dropped}
                )
            except redis.RedisError:
                self.broken = True

    def _flush_locked(self, now: float) -> None:
        self.last_flush = now
        if not self.buffer or self.broken:
            self.buffer.clear()
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for stream, line in self.buffer:
                pipe.xadd(
                    self.key, {"s": stream, "l": line}, maxlen=self.max_lines, approximate=False
                )
            dropped_bytes = self._account([line for _, line in self.buffer])
            if dropped_bytes:
                pipe.xtrim(self.key, maxlen=len(self.sizes), approximate=False)
                pipe.hincrby(self.step_key, "log_dropped_bytes", dropped_bytes)
                caps: dict[FieldT, EncodableT] = {
                    "log_max_lines": self.max_lines,
                    "log_max_bytes": self.max_bytes or 0,
                }
                pipe.hset(self.step_key, mapping=caps)  # the caps that dropped them
            pipe.execute()
        except redis.RedisError:
            self.broken = True  # logs are best effort; the step itself goes on
        self.buffer.clear()

    def _account(self, lines: list[str]) -> int:
        """Count ``lines`` as kept, then drop the oldest kept lines until both caps hold;
        returns the bytes dropped (the stream must then keep ``len(self.sizes)`` lines)."""
        for line in lines:
            size = line_bytes(line)
            self.sizes.append(size)
            self.kept_bytes += size
        dropped = 0
        budget = self.max_bytes
        while self.sizes and (
            len(self.sizes) > self.max_lines or (budget is not None and self.kept_bytes > budget)
        ):
            size = self.sizes.popleft()
            self.kept_bytes -= size
            self.dropped += 1
            dropped += size
        self.dropped_bytes += dropped
        return dropped


def line_bytes(line: str) -> int:
    """What a line counts against RUNBOOK_LOG_BYTES: its UTF-8 text and a newline."""
    return len(line.encode("utf-8", "surrogateescape")) + 1
