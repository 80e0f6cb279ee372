"""The in-process run behind ``runbook_celery.testing`` (see the package docstring)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery.exceptions import Ignore, Reject

from ..client.api import WorkflowSource, load_source, submit_snapshot
from ..client.run import Run, RunLogs
from ..core.settings import get_settings
from ..engine import childruns, tasks, workerstore
from ..engine.app import FANIN_TASK, STEP_TASK, app
from ..engine.taskevents import Parked, StepFailed
from ..plan.compile import DYNAMIC, build_snapshot
from ..plan.runrecord import RunRecord, StepRecord
from ..store import RunStore, redisconn
from ..store.events import Event
from ..store.memory import memory_redis

__all__ = ["RunResult", "StuckRun", "run_workflow"]

MAX_DELIVERIES = 10_000  # of one run: a guard against a message that keeps coming back


class StuckRun(RuntimeError):
    """The in-process run kept redelivering messages without ending (a bug to report)."""


@dataclass(frozen=True)
class RunResult:
    """An in-process run once nothing more can happen: its record, events and logs."""

    record: RunRecord
    events: list[Event] = field(default_factory=list)
    logs: RunLogs = field(default_factory=RunLogs)
    seconds: float = 0.0  # wall time of the whole run, Bash included

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def succeeded(self) -> bool:
        return self.record.succeeded

    @property
    def finished(self) -> bool:
        return self.record.finished

    @property
    def steps(self) -> dict[str, StepRecord]:
        return self.record.steps

    @property
    def outputs(self) -> dict[str, str]:
        """The workflow's ``outputs:`` (steps' outputs are in ``steps[id].outputs``)."""
        return self.record.outputs

    def log(self, step: str) -> str:
        """What one step printed (stdout and stderr, in order), one line per line."""
        return self.logs.text(step)


_LOCK = threading.Lock()


def run_workflow(
    source: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    *,
    retry_delays: bool = False,
    timeout: float = 600,
) -> RunResult:
    """Run ``source`` (a YAML path, a dict or a ``Workflow``) to its end in this process.

    ``timeout`` bounds waiting for timers (retry delays, run timeouts); a step's Bash is
    bounded by its own ``timeout:``.

    Raises:
        InvalidDefinition / InvalidParams: as ``submit()`` does.
        StuckRun: messages kept coming back without the run ending.
    """
    with _LOCK, _InProcess(retry_delays) as engine:
        return engine.run(source, params, timeout)


@dataclass(order=True)
class _Message:
    due: float
    seq: int
    name: str = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)


class _Delivery:
    """What a step task sees of its Celery request: a redelivery and its own signature."""

    def __init__(self, engine: _InProcess, name: str, args: tuple[Any, ...]) -> None:
        self.engine = engine
        self.name = name
        self.args = args
        self.app = _NoEvents()

    def retry(self, countdown: float = 0, **_: Any) -> Exception:
        delay = countdown if self.engine.retry_delays else 0
        self.engine.publish(self.name, self.args, delay)
        return _Redelivered()

    def signature_from_request(self) -> Any:

        return app.signature(self.name, args=self.args, immutable=True)


class _Redelivered(Exception):
    """Raised where Celery's ``Retry`` would be: the message is queued again."""


class _NoEvents:
    """Flower events have no one to go to; announcing them fails quietly as designed."""

    @property
    def events(self) -> Any:
        raise RuntimeError("no event dispatcher in-process")


class _InProcess:
    """Patches the engine's few connection points for the duration of one run."""

    def __init__(self, retry_delays: bool) -> None:
        self.retry_delays = retry_delays
        self.queue: list[_Message] = []
        self.seq = itertools.count()
        self._patches = contextlib.ExitStack()

    def __enter__(self) -> _InProcess:
        url = f"redis://runbook-testing.invalid/{uuid.uuid4().hex}"
        self.settings = replace(
            get_settings(), redis_url=url, broker_url="memory://", prefix="runbook-test"
        )
        self.client = memory_redis()  # the store's in-memory double: the same Lua
        self.store = RunStore(self.client, self.settings.prefix, self.settings.retention)
        real_client_for = redisconn.client_for

        def client_for(wanted: str) -> Any:
            return self.client if wanted == url else real_client_for(wanted)

        def store_for(settings: Any) -> RunStore:
            return self.store if settings.redis_url == url else real_store(settings)

        real_store = redisconn.store_for
        real_child_snapshot = childruns.child_snapshot

        def child_snapshot(*args: Any, **kwargs: Any) -> dict[str, Any]:
            """Child runs of uses: steps are dispatched dynamically too (a canvas's
            continuation is Celery's, and there is no Celery here)."""
            snapshot = real_child_snapshot(*args, **kwargs)
            snapshot["mode"], snapshot["mode_reason"] = DYNAMIC, "in-process"
            return snapshot

        with contextlib.ExitStack() as p:  # undone at once if one of them fails
            p.enter_context(_patched(redisconn, "client_for", client_for))
            p.enter_context(_patched(redisconn, "store_for", store_for))
            p.enter_context(
                _patched(workerstore, "worker_store", lambda: (self.settings, self.store))
            )
            p.enter_context(_patched(workerstore, "lease_store", lambda: self.store))
            p.enter_context(_patched(app, "send_task", self.send_task))
            p.enter_context(_patched(childruns, "child_snapshot", child_snapshot))
            self._patches = p.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self._patches.close()
        self.client.close()

    # ------------------------------------------------------------------ the broker

    def send_task(
        self,
        name: str,
        args: tuple[Any, ...] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: Any = None,
        **_options: Any,
    ) -> None:
        """Celery's ``send_task``: every message the engine publishes comes here."""
        delay = countdown or 0.0
        if eta is not None:
            delay = max(0.0, eta.timestamp() - time.time())
        self.publish(name, tuple(args or ()), delay)

    def publish(self, name: str, args: tuple[Any, ...], delay: float = 0) -> None:
        heapq.heappush(self.queue, _Message(time.monotonic() + delay, next(self.seq), name, args))

    # ------------------------------------------------------------------ the worker

    def run(
        self, source: WorkflowSource, params: Mapping[str, Any] | None, timeout: float
    ) -> RunResult:

        started = time.monotonic()
        snapshot = build_snapshot(load_source(source), params)
        snapshot["mode"], snapshot["mode_reason"] = DYNAMIC, "in-process (runbook_celery.testing)"
        run: Run = submit_snapshot(snapshot, settings=self.settings)
        deadline = started + timeout
        for delivered in itertools.count():
            if delivered >= MAX_DELIVERIES:
                raise StuckRun(f"run {run.id}: {MAX_DELIVERIES} deliveries and not ended")
            message = self._next(run, deadline)
            if message is None:
                break
            self._deliver(message)
        record = run.status()
        events = run.events()
        logs = run.logs()
        return RunResult(record, events, logs, time.monotonic() - started)

    def _next(self, run: Any, deadline: float) -> _Message | None:
        """The next message due. Time passes for real only for a step's delayed message
        (a retry with ``retry_delays``): the run's and an approval's timeouts fire if
        they are due by then, but are never waited for."""

        while self.queue:
            now = time.monotonic()
            if self.queue[0].due <= now:
                return heapq.heappop(self.queue)
            steps = [m.due for m in self.queue if m.name in (STEP_TASK, FANIN_TASK)]
            if not steps or min(steps) > deadline or run.status().finished:
                return None
            time.sleep(min(steps) - now)
        return None

    def _deliver(self, message: _Message) -> None:
        if message.name not in (STEP_TASK, FANIN_TASK):  # run and approval timeouts
            app.tasks[message.name](*message.args)
            return
        delivery = _Delivery(self, message.name, message.args)
        run_id, step_id = message.args
        fan_in = message.name == FANIN_TASK
        execution = tasks._execution(delivery, run_id, step_id, fan_in=fan_in)  # type: ignore[arg-type]
        if isinstance(execution, dict):
            return  # a message for a run or step that is gone: dropped as a worker does
        body = execution.join_instances if fan_in else execution.execute
        # a failed step raises (so a canvas stops), a parked one waits for its gate: both
        # are recorded already, as is a retry, which is queued again
        with contextlib.suppress(StepFailed, Parked, _Redelivered, Ignore, Reject):
            execution.guarded(body)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    had = name in vars(owner)
    old = vars(owner).get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, name, old)
        else:
            delattr(owner, name)  # an instance attribute that shadowed a method
