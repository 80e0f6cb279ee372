"""``Run``: a handle on one run: its record, control, events, logs, and waiting for its end."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import redis

from ..core.errors import BackendUnavailable, RunFailed, RunNotFound, WaitTimeout
from ..core.settings import Settings, get_settings
from ..engine.childruns import cancel_tree
from ..engine.fullredis import full_description
from ..plan.runrecord import RunRecord
from ..store import events, redisconn
from ..store.events import START, TERMINAL_RUN_STATUSES, Event
from ..store.logs import Gap, LogLine, LogReader
from ..store.reconnect import Reconnector
from ..store.redisconn import redact
from .asyncapi import follow_events, wait
from .control import RunControl
from .submission import finish_outside_run, start_rerun


@dataclass(frozen=True)
class RunLogs:
    """What steps printed, as stored, and what the per-step caps dropped (like `logs`)."""

    lines: list[LogLine] = field(default_factory=list)
    dropped: list[Gap] = field(default_factory=list)

    def text(self, step: str | None = None) -> str:
        """The lines (of one step, or of all in the order written), one per line."""
        return "".join(f"{x.text}\n" for x in self.lines if step is None or x.step == step)


class Run:
    """A handle on one run: its id, its live record, and waiting for its end."""

    def __init__(self, run_id: str, settings: Settings | None = None) -> None:
        self.id = run_id
        self.settings = settings or get_settings()
        self.store = redisconn.store_for(self.settings)

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def status(self) -> RunRecord:
        """The current record (status of the run and of every step)."""
        return self.store.get_run(self.id)

    def cancel(self, by: str | None = None) -> RunRecord:
        """Stop the run: nothing new starts, running steps are killed (SIGTERM, grace, SIGKILL).

        Steps whose ``if:`` uses ``always()`` or ``cancelled()`` still run (cleanup).
        ``by`` is recorded as the run's ``cancelled_by`` (Flower passes its logged-in user).
        Returns the record as it is right after the request.
        """
        # child runs of uses: steps are cancelled with it (childruns.py)
        cancel_tree(
            self.store,
            self.id,
            reason="cancelled",
            by=by,
            lease_seconds=self.settings.lease_seconds,
            finish=finish_outside_run,
        )
        return self.status()

    def pause(self, by: str | None = None) -> None:
        """No new step starts until ``resume()``; running steps finish."""
        self._control().pause(by)

    def resume(self, by: str | None = None) -> None:
        """Continue exactly where the run stopped."""
        self._control().resume(by)

    def approve(self, step_id: str, by: str | None = None) -> None:
        self._control().approve(step_id, by)

    def reject(self, step_id: str, by: str | None = None) -> None:
        self._control().reject(step_id, by)

    def retry_step(
        self, step_id: str, env: Mapping[str, str] | None = None, by: str | None = None
    ) -> None:
        """Decide to run a step awaiting a decision again (``on_failure: pause``)."""
        self._control().retry_step(step_id, dict(env or {}), by)

    def skip_step(
        self, step_id: str, outputs: Mapping[str, str] | None = None, by: str | None = None
    ) -> None:
        """Decide to skip a step awaiting a decision; dependents see ``outputs``."""
        self._control().skip_step(step_id, dict(outputs or {}), by)

    def abort(self, by: str | None = None) -> None:
        """Decide to fail a run awaiting a decision."""
        self._control().abort(by)

    def _control(self) -> RunControl:

        return RunControl(self.id, self.settings)

    def rerun(
        self, *, from_failed: bool = False, from_step: str | None = None, by: str | None = None
    ) -> Run:
        """A new run from this run's snapshot; see ``rerun()``."""
        new_id = start_rerun(self.id, from_failed, from_step, self.settings, by)
        return Run(new_id, self.settings)

    def events(self, since: str = START, *, types: Iterable[str] | None = None) -> list[Event]:
        """The events recorded so far, oldest first (``runbook-celery events``)."""

        return list(events.read(self.id, since, types=types, settings=self.settings))

    def logs(self, step: str | None = None) -> RunLogs:
        """The stored log lines of one step (and its instances) or of every step, merged
        in the order written, and the lines the caps dropped (``runbook-celery logs``).

        Raises RunNotFound, InvalidOperation (no such step), BackendUnavailable.
        """
        out = RunLogs()
        for item in LogReader(self.store, self.id, [step] if step else None).read():
            (out.dropped if isinstance(item, Gap) else out.lines).append(item)  # type: ignore[arg-type]
        return out

    async def wait_async(
        self, timeout: float | None = None, *, raise_on_failure: bool = False
    ) -> RunRecord:
        """``wait()`` for asyncio code: a blocking read on the event stream, no thread."""

        return await wait(self, timeout, raise_on_failure=raise_on_failure)

    def events_async(
        self, since: str = START, *, types: Iterable[str] | None = None
    ) -> AsyncIterator[Event]:
        """``async for event in run.events_async()``: recorded events, then live ones,
        ending after the run's final event."""

        return follow_events(self, since, types)

    def _ended(self) -> bool:
        return self.store.run_status(self.id) in TERMINAL_RUN_STATUSES

    def reconnector(self, doing: str, say: Callable[[str], None] | None = None) -> Reconnector:
        """Retries this run's Redis reads for ``RUNBOOK_CLIENT_RECONNECT_SECONDS``."""
        return Reconnector(self.settings.client_reconnect_seconds, doing, say)

    def wait(
        self,
        timeout: float | None = None,
        *,
        raise_on_failure: bool = False,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> RunRecord:
        """Block until the run ends and return its final record.

        Blocks on the run's end entry, written in the same transition as the final event, so
        it returns as soon as the run ends and wakes once, not on every event (no polling
        interval). With ``timeout`` (seconds) raises
        ``WaitTimeout`` once it has passed and the run has not ended; the run goes on.
        A lost connection to Redis is retried for ``RUNBOOK_CLIENT_RECONNECT_SECONDS``,
        resuming the stream after the last event seen; ``on_reconnect`` is told when it is
        lost and when it is back (default: a log warning). Raises ``BackendUnavailable``
        when Redis stays away longer (``WaitTimeout`` if the timeout passes first).
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        patience = self.reconnector(f"waiting for run {self.id}", on_reconnect)
        patience.until = deadline  # a timeout ends reconnecting too (WaitTimeout below)
        try:
            return self._wait(patience, deadline, timeout, raise_on_failure)
        except BackendUnavailable:
            if deadline is not None and time.monotonic() >= deadline:
                raise self.wait_timeout_error(timeout or 0) from None
            raise

    def _wait(
        self,
        patience: Reconnector,
        deadline: float | None,
        timeout: float | None,
        raise_on_failure: bool,
    ) -> RunRecord:
        try:
            current = patience.call(lambda: self.store.run_status(self.id))
        except redis.RedisError as exc:
            raise BackendUnavailable(f"cannot read run: {redact(str(exc))}") from exc
        if current is None:
            raise RunNotFound(self.id)
        if current not in TERMINAL_RUN_STATUSES:
            # never block past the deadline: each read returns by then, ended or not
            block_ms = 1000 if timeout is None else max(1, min(1000, int(timeout * 1000)))
            try:
                while patience.call(lambda: self.store.await_end(self.id, block_ms)) is None:
                    # a second passed: a run that ended without an end entry (expired,
                    # or finished by an older worker) is seen by its status
                    if patience.call(self._ended):
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        raise self.wait_timeout_error(timeout or 0)
            except redis.RedisError as exc:
                raise BackendUnavailable(f"lost Redis while waiting: {redact(str(exc))}") from exc
        record = patience.call(self.status)
        if raise_on_failure and not record.succeeded:
            raise RunFailed(record)
        return record

    def wait_timeout_error(self, timeout: float) -> WaitTimeout:
        """The error for a wait that ran out: says where the run is, and if Redis is full."""
        try:
            status = self.store.run_status(self.id) or "gone"
        except redis.RedisError:
            status = "unknown"
        detail = f"; it goes on (status {status})"
        full = full_description(self.store.r)
        if full:
            detail += f"; {full}"
        return WaitTimeout(self.id, timeout, detail)
