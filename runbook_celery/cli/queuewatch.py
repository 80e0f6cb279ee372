"""Which queues the workers consume, and a warning when a run waits on one that nobody does.

`trigger --wait`, `rerun --wait` and `watch` follow a run by its events. A step on a queue
no worker consumes (no worker started, or none started with `-Q gpu`) writes none, and the
table would say `pending` forever. So, while a run is followed, a thread looks after a few
seconds (and again every little while) at the queues of its pending steps, asks the workers
which queues they consume (Celery's `active_queues` broadcast, answered within a second),
and says once per queue on stderr that nobody consumes it. It only warns: a worker may
still come, so the wait goes on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..engine.app import app
from ..store.events import StepStatus

if TYPE_CHECKING:
    from ..client.run import Run

WARN_AFTER = 5.0  # seconds before the first look: a worker usually takes a step sooner
LOOK_EVERY = 10.0  # seconds between looks while the run is followed
REPLY_WINDOW = 1.0  # seconds workers have to answer the broadcast


def consumed_queues(timeout: float = REPLY_WINDOW) -> set[str] | None:
    """Names of the queues the workers that answer within ``timeout`` consume.

    None when the broadcast itself failed (broker unreachable): nothing is known then.
    """

    try:
        replies = app.control.inspect(timeout=timeout).active_queues()
    except Exception:  # a warning must never break following the run
        return None
    return {q["name"] for queues in (replies or {}).values() for q in queues or ()}


def pending_queues(run: Run) -> dict[str, list[str]]:
    """Queue name -> ids of the run's steps that are pending on it."""
    record = run.status()
    pending = [sid for sid, s in record.steps.items() if s.status == StepStatus.PENDING]
    if not pending:
        return {}
    specs = {spec["id"]: spec for spec in run.store.snapshot(run.id)["steps"]}
    out: dict[str, list[str]] = {}
    for step_id in pending:
        spec = specs.get(step_id.rsplit("[", 1)[0], {})
        out.setdefault(spec.get("queue") or run.settings.default_queue, []).append(step_id)
    return out


def warning_text(queue: str, steps: list[str]) -> str:
    names = ", ".join(steps[:5]) + (f" and {len(steps) - 5} more" if len(steps) > 5 else "")
    return (
        f"warning: no worker consumes queue {queue!r}, where {names} "
        f"{'is' if len(steps) == 1 else 'are'} pending; start one with "
        f"`runbook-celery worker -Q {queue}` (still waiting)"
    )


class QueueWatch:
    """Warns once per queue, from its own thread, while a followed run waits on nobody."""

    def __init__(
        self,
        run: Run,
        warn: Callable[[str], None],
        *,
        after: float = WARN_AFTER,
        every: float = LOOK_EVERY,
        consumed: Callable[[], set[str] | None] = consumed_queues,
    ) -> None:
        self.run, self.warn, self.after, self.every = run, warn, after, every
        self.consumed = consumed
        self.warned: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="queue-watch", daemon=True)

    def look(self) -> None:
        """One look: warn of each queue with pending steps that no worker consumes."""
        waiting = {q: s for q, s in pending_queues(self.run).items() if q not in self.warned}
        if not waiting:
            return
        consumed = self.consumed()
        if consumed is None:
            return
        for queue, steps in sorted(waiting.items()):
            if queue not in consumed:
                self.warned.add(queue)
                self.warn(warning_text(queue, steps))

    def _loop(self) -> None:
        delay = self.after
        while not self._stop.wait(delay):
            # following goes on whatever happens here; the main thread reports real errors
            with contextlib.suppress(Exception):
                self.look()
            delay = self.every

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REPLY_WINDOW + 5)


def _to_stderr(text: str) -> None:
    # sys.stderr looked up now: a live table (rich) swaps it to print above the table
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def warn_unconsumed(
    run: Run, warn: Callable[[str], None] = _to_stderr, **kw: Any
) -> Iterator[None]:
    """While the block follows ``run``, warn on stderr of queues no worker consumes."""
    watch = QueueWatch(run, warn, **kw)
    watch.start()
    try:
        yield
    finally:
        watch.stop()
