"""The step task: claim the step, run its Bash, record the result, hand on to what follows.

The same task serves canvas runs (Celery's chain/chord continue the DAG) and dynamic
runs (the task publishes the children whose needs have all finished). Deliveries are
at-least-once; the store's atomic claim makes a duplicate delivery of a finished step a
no-op and keeps two live copies of one step from running together.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from celery import Task

from . import expressions as ex
from .app import STEP_TASK, app
from .compile import CANVAS, DYNAMIC, snapshot_graph, substitute_text
from .errors import RunNotFound
from .events import FailureReason, StepStatus
from .graph import Graph
from .logsink import StepLogSink
from .redisconn import get_client
from .runner import BashResult, run_bash
from .settings import Settings, get_settings, worker_environment
from .store import RunStore

STDERR_TAIL_LINES = 20


class StepFailed(Exception):
    """Raised so Celery records FAILURE and does not continue the canvas past this step."""


@dataclass(frozen=True)
class RunContext:
    """A run's snapshot parsed once per worker process (it never changes)."""

    snapshot: dict[str, Any]
    graph: Graph
    steps: dict[str, dict[str, Any]]

    @property
    def workflow(self) -> str:
        return self.snapshot["workflow"]


class _RunCache:
    """Small LRU of run contexts: snapshots are immutable, so caching is always safe."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.items: OrderedDict[str, RunContext] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, store: RunStore, run_id: str) -> RunContext:
        with self.lock:
            ctx = self.items.get(run_id)
            if ctx is not None:
                self.items.move_to_end(run_id)
                return ctx
        snap = store.snapshot(run_id)
        ctx = RunContext(snap, snapshot_graph(snap), {s["id"]: s for s in snap["steps"]})
        with self.lock:
            self.items[run_id] = ctx
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return ctx


_cache = _RunCache()


@lru_cache(maxsize=1)
def _worker_store() -> tuple[Settings, RunStore]:
    settings = get_settings()
    return settings, RunStore(get_client(settings), settings.prefix, settings.retention)


@app.task(bind=True, name=STEP_TASK, max_retries=None, acks_late=True)
def run_step(self: Task, run_id: str, step_id: str) -> dict[str, Any]:
    settings, store = _worker_store()
    try:
        ctx = _cache.get(store, run_id)
    except RunNotFound:
        return {"run_id": run_id, "step": step_id, "status": "gone"}
    return StepExecution(self, settings, store, ctx, run_id, step_id).execute()


class StepExecution:
    """One delivery of one step."""

    def __init__(
        self,
        task: Task,
        settings: Settings,
        store: RunStore,
        ctx: RunContext,
        run_id: str,
        step_id: str,
    ) -> None:
        self.task = task
        self.settings = settings
        self.store = store
        self.ctx = ctx
        self.run_id = run_id
        self.step_id = step_id
        self.spec = ctx.steps[step_id]
        self.token = uuid.uuid4().hex
        self.attempt: int | None = None

    # ------------------------------------------------------------------ flow

    def execute(self) -> dict[str, Any]:
        needs = list(self.spec["needs"])
        decision = self.store.start_step(
            self.run_id,
            self.step_id,
            token=self.token,
            needs=needs,
            output_steps=self._referenced_steps(),
            workflow=self.ctx.workflow,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
        )
        if decision.action == "done":
            return self._replay(decision.status or "")
        if decision.action == "busy":
            # another delivery holds the lease; come back when it may have expired
            raise self.task.retry(countdown=max(1, self.settings.lease_seconds // 2))
        if decision.action == "blocked":
            return self._finish(
                StepStatus.SKIPPED, reason=f"needs {decision.blocked_by} {decision.status}"
            )
        if decision.action == "cancelled":
            return self._finish(StepStatus.CANCELLED, reason=FailureReason.CANCELLED)
        if decision.action == "exhausted":
            self.attempt = decision.attempt
            return self._finish(
                StepStatus.FAILED,
                reason=FailureReason.WORKER_LOST,
                stderr=[f"gave up after {decision.attempt} deliveries (worker lost each time)"],
            )
        self.attempt = decision.attempt
        result = self._run(decision.need_outputs or {})
        if result.ok:
            return self._finish(StepStatus.SUCCEEDED, exit_code=0, outputs=result.outputs)
        stderr = result.stderr_tail[-STDERR_TAIL_LINES:]
        if result.message:
            stderr = [*stderr, f"[runbook] {result.message}"][-STDERR_TAIL_LINES:]
        status = (
            StepStatus.CANCELLED if result.reason == FailureReason.CANCELLED else StepStatus.FAILED
        )
        return self._finish(
            status,
            exit_code=result.exit_code,
            reason=result.reason or FailureReason.EXIT_CODE,
            stderr=stderr,
        )

    def _run(self, need_outputs: dict[str, dict[str, str]]) -> BashResult:
        env = worker_environment()
        env.update(self.ctx.snapshot["env"])

        def resolve(ref: ex.Ref) -> Any:
            if ref.kind == "params":
                return self.ctx.snapshot["params"].get(ref.name, "")
            if ref.kind == "outputs":
                return need_outputs.get(ref.name, {}).get(ref.key, "")
            if ref.kind == "all_outputs":
                return need_outputs.get(ref.name, {})
            return ""

        for key, template in self.spec["env"].items():
            env[key] = substitute_text(template, resolve)
        for var, source in self.spec["vars"].items():
            env[var] = ex.to_text(ex.evaluate(ex.parse(source), resolve))
        env["RUNBOOK_RUN_ID"] = self.run_id
        env["RUNBOOK_STEP_ID"] = self.step_id
        env["RUNBOOK_WORKFLOW"] = self.ctx.workflow
        env["RUNBOOK_STEP_ATTEMPT"] = str(self.attempt or 1)
        cwd = self.spec.get("working_dir") or self.ctx.snapshot.get("base_dir")
        sink = StepLogSink(
            self.store.r, self.store.keys, self.run_id, self.step_id, self.settings.log_lines
        )
        try:
            return run_bash(
                self.spec["command"],
                env,
                cwd=cwd,
                output_limit=self.settings.output_limit,
                kill_grace=self.settings.kill_grace,
                tick=self._tick(sink),
                on_line=sink,
            )
        finally:
            sink.close()

    def _tick(self, sink: StepLogSink):  # type: ignore[no-untyped-def]
        """Called while Bash runs: flush logs, keep our lease alive, notice a cancel request."""
        every = max(1.0, self.settings.lease_seconds / 3)
        last_refresh = time.monotonic()

        def tick() -> bool:
            nonlocal last_refresh
            sink.flush()
            try:
                if time.monotonic() - last_refresh >= every:
                    last_refresh = time.monotonic()
                    self.store.refresh_lease(
                        self.run_id, self.step_id, self.token, self.settings.lease_seconds
                    )
                return self.store.cancel_requested(self.run_id)
            except Exception:  # Redis blip: keep the step running, try again next tick
                return False

        return tick

    def _referenced_steps(self) -> list[str]:
        """Steps whose outputs this step's expressions read (needs, direct or transitive)."""
        wanted: list[str] = []
        sources = list(self.spec["vars"].values())
        for template in self.spec["env"].values():
            sources += [o.source for o in ex.find(template)]
        for source in sources:
            for ref in ex.refs(ex.parse(source)):
                if ref.kind in ("outputs", "all_outputs") and ref.name not in wanted:
                    wanted.append(ref.name)
        return wanted

    # ------------------------------------------------------------------ recording

    def _finish(
        self,
        status: StepStatus,
        *,
        exit_code: int | None = None,
        outputs: dict[str, str] | None = None,
        reason: str | None = None,
        stderr: list[str] | None = None,
    ) -> dict[str, Any]:
        failed = status in (StepStatus.FAILED, StepStatus.CANCELLED)
        mode = self.ctx.snapshot["mode"]
        skip: list[str] = []
        children: dict[str, int] = {}
        if mode == CANVAS and status != StepStatus.SUCCEEDED:
            # Celery will not run what follows a failed step: record it as skipped now
            below = self.ctx.graph.descendants(self.step_id)
            skip = [s for s in self.ctx.graph.topological() if s in below]
        elif mode == DYNAMIC:
            children = {
                c: len(self.ctx.graph.needs[c]) for c in self.ctx.graph.children[self.step_id]
            }
        outcome = self.store.finish_step(
            self.run_id,
            self.step_id,
            token=self.token,
            status=status,
            workflow=self.ctx.workflow,
            exit_code=exit_code,
            outputs=outputs,
            stderr_tail=stderr,
            reason=reason,
            attempt=self.attempt,
            skip=skip,
            children=children,
        )
        if outcome.ready:
            from .dispatch import publish_steps

            publish_steps(self.ctx.snapshot, self.run_id, outcome.ready)
        result = {
            "run_id": self.run_id,
            "step": self.step_id,
            "status": status.value,
            "exit_code": exit_code,
            "outputs": outputs or {},
        }
        if failed:
            raise StepFailed(
                f"step {self.step_id} {status.value}: {reason or ''} (exit code {exit_code})"
            )
        return result

    def _replay(self, status: str) -> dict[str, Any]:
        """A duplicate delivery of a finished step: never run it again."""
        if status in (StepStatus.FAILED, StepStatus.CANCELLED):
            raise StepFailed(f"step {self.step_id} already {status}")
        return {"run_id": self.run_id, "step": self.step_id, "status": status, "duplicate": True}
