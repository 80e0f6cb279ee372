"""The Python API: submit a workflow, follow a run, read records. The CLI calls only this."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from ..core.errors import BackendUnavailable, InvalidOperation, RunFailed, RunNotFound, WaitTimeout
from ..core.settings import Settings, get_settings
from ..definition.loader import LoadedWorkflow, from_mapping, from_model, load_workflow
from ..definition.model import Workflow
from ..engine import dispatch
from ..engine.childruns import cancel_tree
from ..engine.fullredis import full_description
from ..engine.step.delivery import finish_outside
from ..plan.compile import (
    build_snapshot,
    make_plan,
    mode_for_snapshot,
    snapshot_graph,
    snapshot_sha256,
)
from ..plan.runrecord import RunRecord
from ..store import RunStore, events, redisconn
from ..store.events import START, TERMINAL_RUN_STATUSES, Event
from ..store.gates import Gates
from ..store.logs import Gap, LogLine, LogReader
from ..store.reconnect import Reconnector
from ..store.redisconn import redact
from .asyncapi import follow_events, wait
from .control import RunControl

# a path to a YAML file, a Workflow built in Python, or its dict (validated like YAML)
WorkflowSource = str | Path | Workflow | LoadedWorkflow | Mapping[str, Any]


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
            finish=_finish_outside,
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
        return rerun(
            self.id, from_failed=from_failed, from_step=from_step, settings=self.settings, by=by
        )

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


def _finish_outside(run_id: str, step_id: str, status: Any, **fields: Any) -> None:
    """A parent's step finished from here: a cancel ended its child run (childruns.py)."""
    finish_outside(run_id, step_id, status, **fields)


def _load(source: WorkflowSource) -> LoadedWorkflow:
    if isinstance(source, LoadedWorkflow):
        return source
    if isinstance(source, Workflow):
        return from_model(source)
    if isinstance(source, Mapping):
        return from_mapping(source)
    return load_workflow(source)


def submit(
    source: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """Validate, snapshot, record and enqueue a run. Nothing is recorded if it cannot start.

    Raises:
        InvalidDefinition / InvalidParams: the workflow or params are not valid.
        BackendUnavailable: Redis or the broker did not answer.
    """
    settings = settings or get_settings()
    loaded = _load(source)
    snapshot = build_snapshot(loaded, params)
    return submit_snapshot(snapshot, settings=settings, extra=extra)


def submit_snapshot(
    snapshot: dict[str, Any],
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """Record and enqueue a run from an already frozen snapshot (submit, rerun)."""

    settings = settings or get_settings()
    store = redisconn.store_for(settings)
    run_id = uuid.uuid4().hex
    graph = snapshot_graph(snapshot)
    plan = make_plan(graph)
    if not graph.needs:  # a rerun with nothing left to do
        raise InvalidOperation("nothing to run: every step would be reused")
    fields = dict(extra or {})
    group = snapshot.get("concurrency")
    if group:
        fields.update(
            cgroup=group["group"],
            cgroup_key=store.keys.cgroup(group["group"]),
            cgroup_limit=str(group["limit"]),
            status="queued",
            # watched when a freed slot admits the run (store.release_group), so a run
            # admitted by a worker that dies before publishing it is sent by the reconciler
            sources=json.dumps(graph.sources()),
            watch_s=str(settings.lease_seconds),
        )
    store.create_run(run_id, snapshot, snapshot_sha256(snapshot), **fields)
    try:
        if group and not _admit(store, run_id, group):
            return Run(run_id, settings)
        dispatch.publish_run(snapshot, run_id, plan.tree, graph.sources(), store)
    except InvalidOperation:
        with contextlib.suppress(redis.RedisError):
            store.delete_run(run_id)
        raise
    except redis.ResponseError as exc:  # Redis answered, and said no (e.g. out of memory)
        left = _withdraw(store, run_id, settings)
        raise BackendUnavailable(f"Redis refused the run: {redact(str(exc))}{left}") from None
    except (OperationalError, redis.RedisError, OSError) as exc:
        left = _withdraw(store, run_id, settings)
        raise BackendUnavailable(
            f"broker at {redact(settings.broker_url)} is unreachable: {redact(str(exc))}{left}"
        ) from None
    return Run(run_id, settings)


def _withdraw(store: RunStore, run_id: str, settings: Settings) -> str:
    """Remove a recorded run that could not be started; '' once removed, else a warning.

    Its steps are watched from the moment it is published, so a record left behind would
    start the run when Redis answers again, after the caller was told it did not start
    (and perhaps submitted it again). So removing it rides out a blip like a client does
    (``RUNBOOK_CLIENT_RECONNECT_SECONDS``); if Redis stays away, the error says so.
    """
    doing = f"removing run {run_id}, which could not be started"
    try:
        Reconnector(settings.client_reconnect_seconds, doing).call(lambda: store.delete_run(run_id))
        return ""
    except (BackendUnavailable, redis.RedisError):
        return (
            f"; run {run_id} was recorded and could not be removed, so it may still start "
            f"once Redis answers again: check `runbook-celery status {run_id}` before "
            "submitting again"
        )


async def asubmit(
    source: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """``submit()`` for asyncio code: same validation, same errors, returns the same ``Run``.

    Celery publishes synchronously, so the submission runs in a worker thread.
    """
    return await asyncio.to_thread(submit, source, params, settings=settings, extra=extra)


def rerun(
    run_id: str,
    *,
    from_failed: bool = False,
    from_step: str | None = None,
    settings: Settings | None = None,
    by: str | None = None,
) -> Run:
    """Start a new run from an earlier run's snapshot (never today's YAML).

    ``from_failed`` reuses the outputs of the steps that succeeded and runs the failed,
    skipped and cancelled ones; ``from_step`` reruns that step and everything downstream
    (and anything that had not succeeded). The original run is left unchanged. ``by`` is
    recorded as the new run's ``triggered_by``.
    """
    settings = settings or get_settings()
    store = redisconn.store_for(settings)
    original = store.get_run(run_id)
    if not original.finished:
        raise InvalidOperation(f"run {run_id} is still {original.status}; wait or cancel it first")
    snapshot = store.snapshot(run_id)
    snapshot.pop("reused", None)
    full = snapshot_graph(snapshot)
    if from_step is not None and from_step not in full.needs:
        known = ", ".join(full.order_hint)
        raise InvalidOperation(f"run {run_id} has no step {from_step!r} (steps: {known})")
    not_ok = {sid for sid in full.needs if original.steps[sid].status != "succeeded"}
    if from_step is not None:
        todo = {from_step} | full.descendants(from_step) | not_ok
    elif from_failed:
        todo = set(not_ok)
    else:
        todo = set(full.needs)
    for sid in list(todo):
        todo |= full.descendants(sid)
    reused = {sid: original.steps[sid].outputs for sid in full.needs if sid not in todo}
    if reused:
        snapshot["reused"] = reused
    snapshot["mode"], snapshot["mode_reason"] = mode_for_snapshot(snapshot)
    extra = {"rerun_of": run_id, **({"triggered_by": by} if by else {})}
    return submit_snapshot(snapshot, settings=settings, extra=extra)


def _admit(store: RunStore, run_id: str, group: Mapping[str, Any]) -> bool:
    """Concurrency group admission; False when the run must not be published now."""

    verdict, running = Gates(store).admit(
        run_id, group["group"], group["limit"], group["on_conflict"]
    )
    if verdict == "start":
        return True
    if verdict == "skip":
        store.skip_run(run_id, f"concurrency group {group['group']!r} is full")
    elif verdict == "cancel":
        for other in running:  # with their child runs, as Run.cancel
            cancel_tree(
                store,
                other,
                reason=f"superseded by run {run_id}",
                by=None,
                lease_seconds=get_settings().lease_seconds,
                finish=_finish_outside,
            )
    return False


def get_run(run_id: str, *, settings: Settings | None = None) -> RunRecord:
    """The current record of a run. Raises RunNotFound."""
    return Run(run_id, settings).status()
