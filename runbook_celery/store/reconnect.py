"""Clients that follow a run ride out a Redis blip instead of giving up at once.

``trigger --wait``, ``watch``, ``logs --follow``, ``events --follow`` and ``Run.wait()``
follow streams by their last id, so after a lost connection (Redis restarted, the
client's network cut for a while) they can reconnect and carry on exactly where they
were. A ``Reconnector`` decides how long to keep trying: ``RUNBOOK_CLIENT_RECONNECT_SECONDS``
from the first failure in a row, then ``BackendUnavailable`` (exit 3). It says once
that it lost Redis and once that it is back (a line on stderr in the CLI, a log warning
in the library), so a user watching a quiet terminal knows why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import redis

from ..core.errors import BackendUnavailable
from ..core.redaction import redact

logger = logging.getLogger("runbook_celery.client")
_T = TypeVar("_T")

# Failures a new connection can cure. Redis loading its AOF after a restart answers
# LOADING (BusyLoadingError, a ConnectionError) until it is ready.
RECONNECTABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
FIRST_PAUSE = 0.25  # seconds before the first retry; doubled up to MAX_PAUSE
MAX_PAUSE = 2.0


def log_warning(message: str) -> None:
    """The library's way to say it is reconnecting (the CLI prints to stderr instead)."""
    logger.warning("%s", message)


class Reconnector:
    """Retries Redis calls while the connection is lost, for at most ``seconds`` in a row."""

    def __init__(
        self,
        seconds: float,
        doing: str,
        say: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        until: float | None = None,
    ) -> None:
        self.seconds = seconds
        self.until = until  # a monotonic time (the caller's own deadline) not to retry past
        self.doing = doing
        self.say = say or log_warning
        self.sleep = sleep
        self.lost_at: float | None = None
        self.pause = FIRST_PAUSE

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, called again after each reconnectable failure until the time is up.

        Raises:
            BackendUnavailable: Redis stayed unreachable for ``seconds``.
        """
        while True:
            try:
                result = fn()
            except RECONNECTABLE as exc:
                self.failed(exc)
                continue
            except BackendUnavailable as exc:  # a store read that wrapped a lost connection
                if not isinstance(exc.__cause__, RECONNECTABLE):
                    raise
                self.failed(exc.__cause__)
                continue
            self.succeeded()
            return result

    def failed(self, exc: Exception) -> None:
        """Note a failure: say so the first time, wait a little, or give up when time is up."""
        now = time.monotonic()
        reason = redact(str(exc)) or type(exc).__name__
        if self.lost_at is None:
            self.lost_at = now
            self.pause = FIRST_PAUSE
            self.say(
                f"lost Redis while {self.doing} ({reason}); reconnecting for up to "
                f"{self.seconds:g} s (RUNBOOK_CLIENT_RECONNECT_SECONDS)"
            )
        give_up_at = self.lost_at + self.seconds
        if self.until is not None:
            give_up_at = min(give_up_at, self.until)
        left = give_up_at - now
        if left <= 0:
            raise BackendUnavailable(
                f"lost Redis while {self.doing} and could not reconnect within "
                f"{self.seconds:g} s (RUNBOOK_CLIENT_RECONNECT_SECONDS): {reason}; "
                "the run goes on"
            ) from exc
        self.sleep(min(self.pause, left))
        self.pause = min(self.pause * 2, MAX_PAUSE)

    def succeeded(self) -> None:
        if self.lost_at is not None:
            self.say(
                f"reconnected to Redis after {time.monotonic() - self.lost_at:.1f} s; "
                f"{self.doing} goes on"
            )
            self.lost_at = None


def resume_on_loss(
    open_stream: Callable[[str], Iterator[tuple[str, _T]]],
    since: str,
    reconnector: Reconnector,
) -> Iterator[tuple[str, _T]]:
    """Entries of a stream that ``open_stream(last_id)`` follows, reopened after the last
    id seen whenever the connection is lost (entries with an empty id are heartbeats)."""
    last = since
    while True:
        try:
            for entry_id, fields in open_stream(last):
                reconnector.succeeded()
                if entry_id:
                    last = entry_id
                yield entry_id, fields
            return
        except RECONNECTABLE as exc:
            reconnector.failed(exc)
