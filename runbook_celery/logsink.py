"""Stream a running step's output lines into a capped Redis Stream, as they happen.

Lines are written at once when they come slowly and in batches when they come fast, so
a chatty step costs one round trip per batch, and a quiet step's line shows up at once.
A line buffered in a burst is written at the latest by the step's next supervision tick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

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
    ) -> None:
        self.client = client
        self.key = keys.logs(run_id, step_id)
        self.step_key = keys.step(run_id, step_id)
        self.max_lines = max_lines
        self.lock = threading.Lock()
        self.buffer: list[tuple[str, str]] = []
        self.last_flush = 0.0
        self.total = 0
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
                dropped = max(0, self.total - self.max_lines)
                self.client.hset(
                    self.step_key, mapping={"log_lines": self.total, "log_dropped": dropped}
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
            pipe.execute()
        except redis.RedisError:
            self.broken = True  # logs are best effort; the step itself goes on
        self.buffer.clear()
