"""The threads a notifier sends from, so one slow URL does not hold back other events."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("runbook_celery.notify")


class SenderPool:
    """Daemon threads that run what they are given: a stopping process never waits for
    a send stuck on a hung service (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, count: int) -> None:
        self.tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._serve, name=f"runbook-notify-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self.tasks.put(task)

    def shutdown(self) -> None:
        for _ in self.threads:
            self.tasks.put(None)

    def _serve(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                task()
            except Exception:  # a sender that died would shrink the pool for good
                log.exception("notifier: a send failed unexpectedly")
