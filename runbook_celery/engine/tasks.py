"""The step task: claim the step, run its Bash, record the result, hand on to what follows.

The same task serves canvas runs (Celery's chain/chord continue the DAG) and dynamic
runs (the task publishes the children whose needs have all finished). Deliveries are
at-least-once; the store's atomic claim makes a duplicate delivery of a finished step a
no-op and keeps two live copies of one step from running together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from ..core.errors import InvalidOperation, RunNotFound, UnsupportedSnapshot
from ..core.settings import Settings, worker_environment
from ..definition import expressions as ex
from ..definition import matrix, shells
from ..definition.graph import Graph
from ..plan.canvasplan import hands_off
from ..plan.compile import CANVAS, DYNAMIC, cancel_survivors, snapshot_graph, substitute_text
from ..plan.masking import Masker
from ..store import Decision, FinishOutcome, Outcome, RunStore, Successor, now_iso
from ..store.events import TERMINAL_RUN_STATUSES, FailureReason, StepStatus
from ..store.gates import Gates
from ..store.logsink import StepLogSink
from . import (
    childruns,
    dispatch,
    stepinputs,
    workerhooks,  # connects the worker signals: recovery, shutdown
    workerstore,
)
from .app import (
    APPROVAL_TIMEOUT_TASK,
    FANIN_TASK,
    RUN_TIMEOUT_TASK,
    STEP_TASK,
    app,
    note_successors,
)
from .canvasfanout import continuation, send_join
from .capture import StdoutCapture
from .fullredis import wait_while_full, worker_stopping
from .lease import LeaseKeeper, boottime
from .runner import BashResult, run_bash
from .taskevents import FannedOut, Parked, StepFailed, StepRequest, announce_skipped, step_failed

STDERR_TAIL_LINES = 20
RETRYABLE = (FailureReason.EXIT_CODE, FailureReason.TIMEOUT)
HANDBACK = "handback"
_INSTANCE = re.compile(r"^(?P<parent>.+)\[(?P<index>0|[1-9][0-9]{0,8})\]$")

log = logging.getLogger("runbook_celery.worker")
# What a parked step waits for, as Flower shows it ("waiting: ...")
_WAITING = {
    "approval": "an approval",
    "paused": "the run to be resumed",
    "max_active_steps": "a free slot (max_active_steps)",
}


def _fans_out(spec: dict[str, Any]) -> bool:
    return bool(spec.get("matrix") or spec.get("for_each"))


@dataclass(frozen=True)
class RunContext:
    """A run's snapshot parsed once per worker process (it never changes)."""

    snapshot: dict[str, Any]
    graph: Graph  # what this run executes (a rerun leaves out the steps it reuses)
    steps: dict[str, dict[str, Any]]

    @property
    def workflow(self) -> str:
        workflow: str = self.snapshot["workflow"]
        return workflow

    @cached_property
    def hands_off(self) -> bool:
        """A canvas run of this snapshot continues by dynamic dispatch at a failure
        (it has steps that may run after one: canvasplan)."""
        return hands_off(self.snapshot["steps"])

    @cached_property
    def full_graph(self) -> Graph:
        """Every step of the snapshot, reused ones too: what ``if:`` conditions look at."""
        return Graph({s["id"]: list(s["needs"]) for s in self.snapshot["steps"]})

    def knows(self, step_id: str, *, fan_in: bool = False) -> bool:
        """Whether ``step_id`` names a step (or an instance of a fanning-out step) of this
        run: anything else in a message is forged or stale and is dropped."""
        if step_id in self.steps:
            return not fan_in or _fans_out(self.steps[step_id])
        m = _INSTANCE.match(step_id)
        return m is not None and not fan_in and _fans_out(self.steps.get(m["parent"]) or {})


class _RunCache:
    """LRU of run contexts, bounded by the steps it holds (a 2,500-step snapshot is MBs).

    Snapshots are immutable, so caching is always safe; a run's entry is dropped when the
    run ends, so finished runs do not sit in every pool process.
    """

    def __init__(self, max_steps: int = 5_000) -> None:
        self.max_steps = max_steps
        self.items: OrderedDict[str, RunContext] = OrderedDict()
        self.steps = 0
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
            if run_id not in self.items:
                self.items[run_id] = ctx
                self.steps += len(ctx.steps)
            while self.steps > self.max_steps and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.steps -= len(old.steps)
        return ctx

    def drop(self, run_id: str) -> None:
        with self.lock:
            old = self.items.pop(run_id, None)
            if old is not None:
                self.steps -= len(old.steps)


_cache = _RunCache()


def _execution(
    task: Task[..., Any], run_id: str, step_id: str, *, fan_in: bool = False
) -> StepExecution | dict[str, Any]:
    """The delivery's context, or what to answer when its message names a run that no
    longer exists (expired, deleted) or a step the run does not have (forged, stale)."""
    settings, store = workerstore.worker_store()
    try:
        ctx = _cache.get(store, run_id)
    except RunNotFound:
        log.warning("dropped %s for step %r: run %s does not exist", task.name, step_id, run_id)
        return {"run_id": run_id, "step": step_id, "status": "gone"}
    except UnsupportedSnapshot as exc:
        # recorded by a newer release: fail the run clearly rather than misread it
        log.error("refused %s for step %r: %s", task.name, step_id, exc)
        store.cancel_run(run_id, reason=FailureReason.UNSUPPORTED_SNAPSHOT)
        return {"run_id": run_id, "step": step_id, "status": "refused"}
    if not ctx.knows(step_id, fan_in=fan_in):
        log.warning("dropped %s for step %r: run %s has no such step", task.name, step_id, run_id)
        return {"run_id": run_id, "step": step_id, "status": "unknown"}
    return StepExecution(task, settings, store, ctx, run_id, step_id)


# Request: what Flower is told (taskevents); throws: an ordinary step failure is one log
# line at INFO, not a traceback at ERROR.
_STEP_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "max_retries": None,
    "acks_late": True,
    "Request": StepRequest,
    "throws": (StepFailed,),
}


@app.task(name=STEP_TASK, **_STEP_TASK_OPTIONS)
def run_step(self: Task[..., Any], run_id: str, step_id: str) -> dict[str, Any]:
    execution = _execution(self, run_id, step_id)
    if isinstance(execution, dict):
        return execution
    result = execution.guarded(execution.execute)
    if execution.mode != DYNAMIC:  # returned into a canvas: a long chain's next segment
        dispatch.publish_next_segment(execution.ctx.snapshot, run_id, step_id)
    return result


@app.task(name=FANIN_TASK, **_STEP_TASK_OPTIONS)
def fan_in(self: Task[..., Any], run_id: str, step_id: str) -> dict[str, Any]:
    """Join a fanned-out step: all its instances have ended; record the step itself."""
    execution = _execution(self, run_id, step_id, fan_in=True)
    if isinstance(execution, dict):
        return execution
    return execution.guarded(execution.join_instances)


@app.task(name=RUN_TIMEOUT_TASK, send_events=False)  # internal: not a step in Flower
def run_timeout(run_id: str) -> str:
    """Fires when a run's `timeout` expires: stop what is left of the run."""
    settings, store = workerstore.worker_store()
    try:
        if store.run_status(run_id) not in TERMINAL_RUN_STATUSES:
            snapshot = store.snapshot(run_id)
            keep = cancel_survivors(snapshot)
            _, final = store.cancel_run(run_id, reason=FailureReason.TIMEOUT, keep=keep)
            if keep:  # kept steps whose needs the cancel ended are ready now
                dispatch.continue_survivors(store, run_id, settings.lease_seconds)
            childruns.after_cancel(
                store,
                run_id,
                snapshot,
                final,
                reason=FailureReason.TIMEOUT,
                by=None,
                lease_seconds=settings.lease_seconds,
                finish=finish_outside,
            )
            return "timed out"
    except RunNotFound:
        pass
    return "finished in time"


@app.task(name=APPROVAL_TIMEOUT_TASK, send_events=False)  # internal: not a step in Flower
def approval_timeout(run_id: str, step_id: str) -> str:
    """An approval gate waited too long: reject the step."""
    _settings, store = workerstore.worker_store()
    try:
        status = store.step_hashes(run_id, [step_id])[step_id].get("status")
        if status != StepStatus.AWAITING_APPROVAL:
            return f"step already {status}"
        # approved (or cancelled) since that read: FINISH refuses, the gate's state stands
        finish_outside(
            run_id,
            step_id,
            StepStatus.FAILED,
            reason="approval_timeout",
            stderr=["[runbook] approval not given in time"],
            expect=StepStatus.AWAITING_APPROVAL,
        )
    except RunNotFound:
        return "run gone"
    except InvalidOperation as refused:
        return str(refused)
    return "rejected"


def finish_outside(run_id: str, step_id: str, status: StepStatus, **fields: Any) -> None:
    """Record a step's end from outside its task (operator decisions), handing on as usual."""
    settings, store = workerstore.worker_store()
    ctx = _cache.get(store, run_id)
    # no task: StepExecution tests for None where an operator's decision can get to
    execution = StepExecution(None, settings, store, ctx, run_id, step_id)  # type: ignore[arg-type]
    with contextlib.suppress(StepFailed):
        execution._finish(status, **fields)


class StepExecution:
    """One delivery of one step (or of one instance of a fanned-out step)."""

    def __init__(
        self,
        task: Task[..., Any],
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
        self.parent: str | None = None
        self.values: dict[str, Any] = {}
        if step_id in ctx.steps:
            self.spec = ctx.steps[step_id]
        else:  # an instance "X[3]" of a fanned-out step X
            self.parent = step_id.rsplit("[", 1)[0]
            self.spec = ctx.steps[self.parent]
        self.token = uuid.uuid4().hex
        self.attempt: int | None = None
        self.mode: str | None = None  # from the store when known; a canvas run may fail over
        self.keeper: LeaseKeeper | None = None
        self._claim_sent = 0.0
        self.inline = False  # run inside another step's task, which hands on for it
        self.recorded = False  # this execution's FINISH went through (not a duplicate)
        self.joined: StepExecution | None = None  # the fan-out step this instance joined
        self._statuses: dict[str, str] = {}  # steps.ID.status, read once
        self._run_status_seen: str | None = None

    # ------------------------------------------------------------------ flow

    def guarded(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body``; a bug in it (not a step failure, not Redis) fails the step with
        reason ``internal_error`` instead of leaving the run to replay it forever."""
        try:
            return body()
        except (Ignore, Retry, Reject, StepFailed, redis.RedisError):
            raise
        except ex.EvaluationError as exc:  # e.g. fromJSON() of text that is not JSON
            return self._finish(
                StepStatus.FAILED,
                reason=FailureReason.BAD_INPUT,
                stderr=[f"[runbook] {exc}"[:2000]],
            )
        except Exception as exc:
            log.exception("step %s of run %s: internal error", self.step_id, self.run_id)
            return self._finish(
                StepStatus.FAILED,
                reason=FailureReason.INTERNAL_ERROR,
                stderr=[f"[runbook] internal error: {type(exc).__name__}: {exc}"[:2000]],
            )

    def execute(self) -> dict[str, Any]:
        ignore_cancel = False
        check_needs = self.parent is None
        if self.parent is None and self.spec.get("if"):
            should_run, ignore_cancel, why = self._condition()
            if not should_run:
                return self._finish(StepStatus.SKIPPED, reason=why, check_terminal=True)
            check_needs = False
        else:
            self.values = (
                self.store.instance_values(self.run_id, self.step_id) if self.parent else {}
            )
        decision = self._start(check_needs, ignore_cancel)
        if decision.action != "start":
            return self._not_started(decision)
        self.attempt = decision.attempt
        self.mode = decision.mode
        if self._run_status_seen is None:  # run.status as the claim saw it (no read more)
            self._run_status_seen = decision.run_status
        self.keeper = LeaseKeeper(
            workerstore.lease_store(),
            self.run_id,
            self.step_id,
            token=self.token,
            attempt=decision.attempt,
            lease_seconds=self.settings.lease_seconds,
            claimed_at=self._claim_sent,
        ).start()
        try:  # the lease is kept until the result is recorded, not only while Bash runs
            outputs = decision.need_outputs or {}
            if self.parent is None and self.spec.get("uses"):  # a child run (childruns.py)
                return childruns.start_child(self, outputs)
            if self.parent is None and _fans_out(self.spec):
                return self._fan_out(outputs)
            started = now_iso()
            result = self._run(outputs, decision.env or {})
            return self._record(result, started)
        finally:
            self.keeper.stop()

    def _not_started(self, decision: Any) -> dict[str, Any]:
        """The claim did not start the step: finish, hand on, or drop this delivery."""
        if decision.action == "done":
            return self._replay(decision.status or "")
        if decision.action == "unknown":
            log.warning(
                "dropped a message for step %r of run %s: no such step in the record",
                self.step_id,
                self.run_id,
            )
            return {"run_id": self.run_id, "step": self.step_id, "status": "unknown"}
        if decision.action == "busy":
            # another delivery holds the lease; come back when it may have expired
            raise self.task.retry(countdown=max(1, self.settings.lease_seconds // 2))
        if decision.action == "parked":  # acknowledged; published again when the gate opens
            raise Parked(_WAITING.get(decision.status or "", decision.status or "a gate"))
        if decision.action == "blocked":
            return self._finish(
                StepStatus.SKIPPED, reason=f"needs {decision.blocked_by} {decision.status}"
            )
        if decision.action == "cancelled":
            return self._finish(StepStatus.CANCELLED, reason=decision.status or "cancelled")
        if decision.action == "exhausted":
            self.attempt = decision.attempt
            return self._finish(
                StepStatus.FAILED,
                reason=FailureReason.WORKER_LOST,
                stderr=[
                    f"[runbook] gave up after {decision.status} deliveries: the worker "
                    "running this step was lost each time"
                ],
            )
        raise RuntimeError(f"unexpected claim decision {decision.action!r}")

    def _start(self, check_needs: bool, ignore_cancel: bool) -> Any:
        """Claim the step. When a gate says "not now", claim again with this delivery's
        message: the store parks it in that same transition (or starts the step, if the
        gate opened meanwhile), so a step is never left unclaimed and unparked. While
        Redis is full, each claim waits until memory is freed (fullredis)."""
        approval = (self.spec.get("approval") or {}) if self.parent is None else {}
        park_message: dict[str, Any] | None = None
        while True:
            decision = wait_while_full(
                partial(self._claim, check_needs, ignore_cancel, park_message, approval),
                f"claiming step {self.step_id} of run {self.run_id}",
                give_up=worker_stopping,
            )
            if decision.action != "park" or park_message is not None:
                break  # (a claim given the message never answers "park")
            park_message = dict(self.task.signature_from_request())
        if (
            decision.action == "parked"
            and decision.status == "approval"
            and approval.get("timeout")
        ):
            app.signature(
                APPROVAL_TIMEOUT_TASK, args=(self.run_id, self.step_id), immutable=True
            ).apply_async(countdown=approval["timeout"], root_id=self.run_id)
        return decision

    def _claim(
        self,
        check_needs: bool,
        ignore_cancel: bool,
        park_message: dict[str, Any] | None,
        approval: dict[str, Any],
    ) -> Any:
        """One CLAIM transition. Its send time starts the lease on this side (LeaseKeeper):
        a claim retried while Redis was full counts from the retry that went through."""
        self._claim_sent = boottime()
        return self.store.start_step(
            self.run_id,
            self.step_id,
            token=self.token,
            needs=list(self.spec["needs"]) if self.parent is None else [],
            output_steps=self._referenced_steps(),
            workflow=self.ctx.workflow,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
            check_needs=check_needs,
            ignore_cancel=ignore_cancel,
            needs_approval=self.parent is None and bool(self.spec.get("approval")),
            max_active=self.max_active,
            park_message=park_message,
            approval_prompt=approval.get("prompt", ""),
        )

    @cached_property
    def masker(self) -> Masker:
        """Masks the workflow's `secrets:`: this worker's values, and values an operator
        gave them with `retry --env` anywhere in this run (masking.py)."""
        names = self.ctx.snapshot.get("secrets") or []
        if not names:
            return Masker(())
        env = worker_environment()
        values = [env[n] for n in names if env.get(n)]
        return Masker(values + self.store.secret_overrides(self.run_id))

    @property
    def max_active(self) -> int:
        return int(self.ctx.snapshot.get("max_active_steps") or 0)

    def _after(self, outcome: Outcome | FinishOutcome, what: str) -> None:
        """Publish what a transition let go (a freed slot's parked message); a transition
        refused because another delivery holds the step ends this delivery: it is
        acknowledged, nothing is recorded, and what follows the step is handed on by the
        delivery that holds it."""
        for message in outcome.unparked:
            app.signature(message).apply_async()
        if outcome.superseded:
            log.warning(
                "step %s of run %s (attempt %s): %s refused, another delivery holds the "
                "step; discarded",
                self.step_id,
                self.run_id,
                self.attempt,
                what,
            )
            raise Ignore()

    def _fenced(self, result: BashResult) -> bool:
        """Whether this attempt was stopped because its lease could not be kept (so its
        result says nothing about the step)."""
        keeper = self.keeper
        if keeper is None:
            return False
        killed = result.exit_code is not None and result.exit_code < 0
        return keeper.lost is not None or (killed and keeper.expired())

    def _hand_back(self, reason: str) -> dict[str, Any]:
        """Give the step back without a result and send its message again (pending again,
        attempt not counted); refused (and discarded) if another delivery holds it."""
        outcome = self._while_full(
            partial(
                self.store.handback_step,
                self.run_id,
                self.step_id,
                token=self.token,
                workflow=self.ctx.workflow,
                attempt=self.attempt or 0,
                reason=reason,
                lease_seconds=self.settings.lease_seconds,
            ),
            "handing back",
        )
        self._after(outcome, "hand-back")
        raise self.task.retry(countdown=0)

    def _record(self, result: BashResult, started: str) -> dict[str, Any]:
        history = {
            "attempt": self.attempt,
            "exit_code": result.exit_code,
            "reason": result.reason,
            "started_at": started,
            "finished_at": now_iso(),
        }
        if self._fenced(result):
            return self._hand_back("lease_lost")
        if result.reason == HANDBACK:
            return self._hand_back("shutdown")
        if result.ok:
            return self._finish(
                StepStatus.SUCCEEDED, exit_code=0, outputs=result.outputs, history=history
            )
        stderr = result.stderr_tail[-STDERR_TAIL_LINES:]
        if result.message:
            stderr = [*stderr, f"[runbook] {result.message}"][-STDERR_TAIL_LINES:]
        reason = result.reason or FailureReason.EXIT_CODE
        if reason == FailureReason.EXIT_CODE and result.exit_code in (
            self.spec.get("skip_on_exit_codes") or ()
        ):  # like Airflow's skip_on_exit_code: no retry, recorded skipped
            return self._finish(
                StepStatus.SKIPPED,
                exit_code=result.exit_code,
                reason=FailureReason.EXIT_CODE_SKIP,
                stderr=stderr,
                history=history,
            )
        if reason == FailureReason.CANCELLED:
            cancel_reason = self.store.cancel_reason(self.run_id)
            if cancel_reason == FailureReason.TIMEOUT:  # the run's timeout, not a person
                reason = FailureReason.TIMEOUT
            else:
                return self._finish(
                    StepStatus.CANCELLED,
                    exit_code=result.exit_code,
                    reason=reason,
                    stderr=stderr,
                    history=history,
                )
        delay = self._retry_delay(reason, result.exit_code)
        if delay is not None:
            return self._retry(result.exit_code, reason, delay, history)
        if self._on_failure() == "pause" and not self.store.cancel_requested(self.run_id):
            return self._await_decision(result.exit_code, reason, stderr, history)
        return self._finish(
            StepStatus.FAILED,
            exit_code=result.exit_code,
            reason=reason,
            stderr=stderr,
            history=history,
            allowed_failure=self._allowed_failure(reason, result.exit_code),
        )

    def _allowed_failure(self, reason: str, exit_code: int | None) -> bool:
        """``continue_on_error``: true for any failure, or a list of the exit codes that may
        fail (Dagu's continueOn.exitCode): a timeout or a lost worker is no such exit."""
        allowed = self.spec.get("continue_on_error")
        if isinstance(allowed, list):
            return reason == FailureReason.EXIT_CODE and exit_code in allowed
        return bool(allowed)

    def _retry(
        self, exit_code: int | None, reason: str, delay: float, history: dict[str, Any]
    ) -> dict[str, Any]:
        outcome = self._while_full(
            partial(
                self.store.retry_step,
                self.run_id,
                self.step_id,
                token=self.token,
                workflow=self.ctx.workflow,
                attempt=self.attempt or 1,
                exit_code=exit_code,
                reason=reason,
                delay=delay,
                history=history,
                lease_seconds=self.settings.lease_seconds,
            ),
            "recording a retry of",
        )
        self._after(outcome, "retry")
        raise self.task.retry(countdown=delay)

    def _await_decision(
        self, exit_code: int | None, reason: str, stderr: list[str], history: dict[str, Any]
    ) -> dict[str, Any]:
        outcome = self._while_full(
            partial(
                Gates(self.store).await_decision,
                self.run_id,
                self.step_id,
                token=self.token,
                workflow=self.ctx.workflow,
                signature=dict(self.task.signature_from_request()),
                exit_code=exit_code,
                reason=reason,
                stderr=self.masker.mask_value(stderr),
                history=history,
                attempt=self.attempt or 1,
            ),
            "parking for a decision",
        )
        self._after(outcome, "wait for a decision")
        raise Parked("a decision (retry, skip or abort)")

    def _on_failure(self) -> str | None:
        return self.spec.get("on_failure") if self.parent is None else None

    def _retry_delay(self, reason: str, exit_code: int | None) -> float | None:
        """Seconds until the next attempt, or None when this failure is final."""
        policy = self.spec.get("retries")
        if not policy or reason not in RETRYABLE or (self.attempt or 1) > policy["limit"]:
            return None
        codes = policy.get("on_exit_codes")
        if codes is not None and exit_code not in codes:
            return None
        if self.store.cancel_requested(self.run_id):
            return None
        delay: float = policy["delay"] * (policy["backoff"] ** ((self.attempt or 1) - 1))
        if policy.get("max_delay") is not None:
            delay = min(delay, policy["max_delay"])
        return delay

    # ------------------------------------------------------------------ conditions

    def _condition(self) -> tuple[bool, bool, str]:
        """Evaluate ``if:``: returns (run it?, run even though the run is cancelled?, why)."""
        node = ex.parse_condition(self.spec["if"])
        # like GitHub Actions: a plain expression implies success(), unless it reads a status
        if not ex.calls(node) and not ex.names_a_status(node):
            node = ex.BinOp("&&", ex.Call("success"), node)
        # the whole snapshot's graph: a rerun's reused steps are needs and ancestors too
        ancestors = sorted(self.ctx.full_graph.ancestors(self.step_id))
        hashes = self.store.step_hashes(self.run_id, ancestors)
        cancel = self.store.cancel_requested(self.run_id)

        def ok(h: dict[str, str]) -> bool:
            return h.get("status") == "succeeded" or (
                h.get("status") == "failed" and h.get("allowed_failure") == "1"
            )

        status = {
            "success": all(ok(hashes[n]) for n in self.spec["needs"]) and not cancel,
            "failure": any(
                h.get("status") == "failed" and h.get("allowed_failure") != "1"
                for h in hashes.values()
            ),
            "always": True,
            "cancelled": cancel,
        }
        outputs = {sid: _outputs(h) for sid, h in hashes.items()}
        self._statuses = {sid: h.get("status", "") for sid, h in hashes.items()}
        verdict = ex.truthy(ex.evaluate(node, self._resolver(outputs), status))
        survives_cancel = bool(ex.calls(node) & {"always", "cancelled"})
        if cancel and not survives_cancel:
            return False, False, "run cancelled"
        return verdict, cancel, "" if verdict else f"condition false: {self.spec['if']}"

    # ------------------------------------------------------------------ running Bash

    def _resolver(self, outputs: dict[str, Any]) -> Callable[[ex.Ref], Any]:
        def resolve(ref: ex.Ref) -> Any:
            if ref.kind == "params":
                return self.ctx.snapshot["params"].get(ref.name, "")
            if ref.kind == "outputs":
                got = outputs.get(ref.name, {})
                if isinstance(got, list):  # a fanned-out step: one value per instance
                    return [o.get(ref.key, "") for o in got]
                return got.get(ref.key, "")
            if ref.kind == "all_outputs":
                return outputs.get(ref.name, {})
            if ref.kind == "matrix":
                return self.values.get("matrix", {}).get(ref.name, "")
            if ref.kind == "item":
                return self.values.get("item", "")
            if ref.kind == "status":
                return self._step_status(ref.name)
            if ref.kind == "run_status":
                return self._run_status()
            if ref.kind == "needs":
                return {
                    sid: {"result": self._step_status(sid), "outputs": outputs.get(sid, {})}
                    for sid in self.spec["needs"]
                }
            return ""

        return resolve

    def _step_status(self, step_id: str) -> str:
        """``steps.ID.status`` of a step this one needs (so it has finished)."""
        if step_id not in self._statuses:
            unread = [s for s in (step_id, *self.spec["needs"]) if s not in self._statuses]
            self._statuses.update(
                (sid, h.get("status", ""))
                for sid, h in self.store.step_hashes(self.run_id, unread).items()
            )
        return self._statuses.get(step_id, "")

    def _run_status(self) -> str:
        """``run.status`` and ``RUNBOOK_RUN_STATUS``: the run's outcome so far."""
        if self._run_status_seen is None:
            self._run_status_seen = self.store.run_status_so_far(self.run_id)
        return self._run_status_seen

    def _checked_inputs(
        self, workflow_env: dict[str, str], override: dict[str, str], resolve: Any
    ) -> BashResult | str | None:
        """The step's directory, or the failed result when an input cannot be used:
        a NUL byte that arrived at run time, a directory missing on this worker."""
        nul = stepinputs.nul_source(self.spec, workflow_env, override, resolve)
        if nul is not None:
            return BashResult(None, reason=FailureReason.BAD_INPUT, message=nul)
        cwd, why = stepinputs.working_dir(self.spec, self.ctx.snapshot)
        if why is not None:
            return BashResult(None, reason=FailureReason.BAD_WORKING_DIR, message=why)
        return cwd

    def _run(self, need_outputs: dict[str, Any], override: dict[str, str]) -> BashResult:
        env = worker_environment()
        workflow_env = self.ctx.snapshot["env"]
        env.update(workflow_env)
        resolve = self._resolver(need_outputs)
        for key, template in self.spec["env"].items():
            env[key] = substitute_text(template, resolve)
        for var, source in self.spec["vars"].items():
            env[var] = ex.to_text(ex.evaluate(ex.parse(source), resolve))
        env.update(override)  # an operator's `retry --env`
        env["RUNBOOK_RUN_ID"] = self.run_id
        env["RUNBOOK_STEP_ID"] = self.step_id
        env["RUNBOOK_WORKFLOW"] = self.ctx.workflow
        env["RUNBOOK_STEP_ATTEMPT"] = str(self.attempt or 1)
        env["RUNBOOK_RUN_STATUS"] = self._run_status()
        if self.spec.get("shell_script") is not None:  # shell: sh/python/...: its text
            env[shells.SCRIPT_VAR] = self.spec["shell_script"]
        sink = StepLogSink(
            self.store.r,
            self.store.keys,
            self.run_id,
            self.step_id,
            self.settings.log_lines,
            max_bytes=self.settings.log_bytes,
        )
        grace = self.spec.get("kill_grace")
        capture = StdoutCapture(self.settings.output_limit) if self.spec.get("output") else None
        try:
            cwd = self._checked_inputs(workflow_env, override, resolve)
            if isinstance(cwd, BashResult):  # refused: fails at once, not retried
                sink("stderr", f"[runbook] {cwd.message}")
                return cwd
            result = run_bash(
                self.spec["command"],
                env,
                cwd=cwd,
                output_limit=self.settings.output_limit,
                timeout=self.spec.get("timeout"),
                kill_grace=self.settings.kill_grace if grace is None else grace,
                tick=self._tick(sink),
                on_line=capture.tee(sink) if capture else sink,
                on_spawn=self.keeper.attach if self.keeper else None,
                masker=self.masker,
            )
            if capture:
                capture.into(result, self.spec["output"])
            return result
        finally:
            if self.keeper:
                self.keeper.detach()
            sink.close()

    def _tick(self, sink: StepLogSink) -> Callable[[], bool | str]:
        """Called while Bash runs: flush logs, notice cancel, shutdown or a lost lease.

        The lease itself is renewed by the delivery's LeaseKeeper thread; here the
        guardian's kill time follows its renewals (from this thread, which also releases
        the step's process group, so the guardian never hears of a released group)."""
        flag = workerstore.shutdown_flag_path(os.getppid())
        keeper = self.keeper
        survives_cancel = self.parent is None and self.step_id in cancel_survivors(
            self.ctx.snapshot
        )

        def tick() -> bool | str:
            if keeper is not None:
                if keeper.lost is not None:
                    return True  # stop now: the result is discarded (see _fenced)
                keeper.push_deadline()
            sink.flush()
            if os.path.exists(flag):
                return HANDBACK
            if survives_cancel:  # cleanup (always()/cancelled()): a cancel must not stop it
                return False
            try:
                return self.store.cancel_requested(self.run_id)
            except Exception:  # Redis blip: keep the step running, try again next tick
                return False

        return tick

    def _referenced_steps(self) -> list[str]:
        """Steps whose outputs this step's expressions read (needs, direct or transitive)."""
        wanted: list[str] = []
        sources = list(self.spec["vars"].values())
        with_ = [v for v in (self.spec.get("with") or {}).values() if isinstance(v, str)]
        for template in [*self.spec["env"].values(), *with_]:
            sources += [o.source for o in ex.find(template)]
        if self.spec.get("for_each") and self.parent is None:
            sources += [o.source for o in ex.find(self.spec["for_each"])]
        for source in sources:
            for ref in ex.refs(ex.parse(source)):
                if ref.kind in ("outputs", "all_outputs") and ref.name not in wanted:
                    wanted.append(ref.name)
                elif ref.kind == "needs":  # GitHub's needs context: every direct need's outputs
                    wanted += [n for n in self.spec["needs"] if n not in wanted]
        return wanted

    # ------------------------------------------------------------------ fan-out

    def _fan_out(self, need_outputs: dict[str, Any]) -> dict[str, Any]:
        """Record one instance per matrix combination / list item and send the first ones."""

        values = self._instance_values(need_outputs)
        if isinstance(values, dict):  # the step failed: too many instances, or not a list
            return values
        if not values:
            return self._finish(StepStatus.SUCCEEDED, exit_code=0, outputs=[])
        window = dispatch.fan_out_window(self.spec.get("max_parallel"), len(values))
        self._keep_continuation()
        # the first window is watched from the transition that records it (recovery.py)
        ids = self._while_full(
            partial(
                self.store.add_instances,
                self.run_id,
                self.step_id,
                values,
                window,
                watch_seconds=self._watch_seconds,
            ),
            "recording the instances of",
        )
        outcome = self._while_full(
            partial(
                self.store.release_step, self.run_id, self.step_id, self.token, self.attempt or 0
            ),
            "releasing",
        )
        self._after(outcome, "fan-out")
        self._stop_keeping()  # released: the instances hold their own leases
        if self.store.cancel_requested(self.run_id):
            # cancelled while we fanned out: cancel the new instances too, send none
            reason = self.store.cancel_reason(self.run_id) or FailureReason.CANCELLED
            self.store.cancel_run(
                self.run_id, reason=reason, keep=cancel_survivors(self.ctx.snapshot)
            )
        else:
            dispatch.publish_fan_out(self.ctx.snapshot, self.run_id, ids[:window])
        result = {
            "run_id": self.run_id,
            "step": self.step_id,
            "status": "fanned_out",
            "instances": len(ids),
        }
        if self._in_canvas:
            # the join continues the canvas (canvasfanout): store this task's result as
            # Celery would (as in dynamic mode), hand on, and keep Celery from continuing
            request = self.task.request
            task_id = request.id or f"{self.run_id}.{self.step_id}"
            self.task.backend.store_result(task_id, result, "SUCCESS", request=request)
            self.store.hand_on(self.run_id, self.step_id, [], self.settings.lease_seconds)
            raise FannedOut(repr(result))
        return result

    @property
    def _in_canvas(self) -> bool:
        """This delivery of a fanning-out step holds a place in a canvas (not dynamic)."""
        return self.mode == CANVAS and self.task is not None and not self.inline

    def _keep_continuation(self) -> None:
        """Before any instance exists: keep the join that takes this step's canvas place."""
        if self._in_canvas:
            message = continuation(self.task.request, self.ctx.snapshot, self.run_id, self.step_id)
            self._while_full(
                partial(self.store.keep_continuation, self.run_id, self.step_id, message),
                "keeping the join of",
            )

    def _instance_values(
        self, need_outputs: dict[str, Any]
    ) -> list[dict[str, Any]] | dict[str, Any]:
        """Each instance's values, or the failed step's result when there can be none.

        The instance cap (RUNBOOK_MAX_INSTANCES) is checked before anything is built or
        recorded: 100,000 items once took a pool process 500 MB and Redis 147 MB.
        """
        cap = self.settings.max_instances
        if self.spec.get("matrix"):
            try:
                combos = matrix.expand(self.spec["matrix"], cap)
            except matrix.TooManyCombinations as exc:
                return self._too_many(str(exc), cap)
            return [{"matrix": combo} for combo in combos]
        occ = ex.find(self.spec["for_each"])[0]
        raw = ex.evaluate(occ.node, self._resolver(need_outputs))
        try:
            items = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            items = None
        if not isinstance(items, list):
            return self._finish(
                StepStatus.FAILED,
                reason="bad_input",
                stderr=[
                    f"[runbook] for_each: {self.spec['for_each']} is not a JSON list: "
                    f"{str(raw)[:200]!r}"
                ],
            )
        if len(items) > cap:
            return self._too_many(f"for_each list has {len(items):,} items", cap)
        return [{"item": item} for item in items]

    def _too_many(self, what: str, cap: int) -> dict[str, Any]:
        return self._finish(
            StepStatus.FAILED,
            reason=FailureReason.TOO_MANY_INSTANCES,
            stderr=[
                f"[runbook] {what}: more than the {cap:,} instances a step may have "
                "(RUNBOOK_MAX_INSTANCES); split the work or raise the limit"
            ],
        )

    def _instance_ended(self) -> None:
        """This instance has ended: send the next of its lane; the last one joins them all.

        The join runs here rather than as a message, which would wait behind every
        instance message still queued (after a cancel, up to a window of them). What
        becomes due is watched in the same transition (``RunStore.instance_ended``); the
        parent hands on with this task when its join is recorded here (_note_successors).
        """

        nxt, join = wait_while_full(
            lambda: self.store.instance_ended(self.run_id, self.step_id, self._watch_seconds),
            f"handing on from instance {self.step_id} of run {self.run_id}",
            give_up=worker_stopping,
        )
        if nxt:
            dispatch.publish_steps(self.ctx.snapshot, self.run_id, [nxt])
        message = (
            self.store.continuation(self.run_id, self.parent) if join and self.parent else None
        )
        if message and self.parent:
            # a canvas run: the join is the task that continues it (canvasfanout); the
            # parent stays watched (INSTANCE_ENDED) until that task hands it on
            send_join(message, self.ctx.snapshot, self.run_id, self.parent)
        elif join and self.parent:
            parent = StepExecution(
                self.task, self.settings, self.store, self.ctx, self.run_id, self.parent
            )
            parent.inline = True  # this task hands on for it
            # The parent's failure is not this instance's; a join refused because another
            # delivery holds the parent (Ignore) is left to the parent's watch, and this
            # instance still hands on.
            try:
                with contextlib.suppress(StepFailed, Ignore):
                    parent.join_instances()
            finally:
                self.joined = parent if parent.recorded else None

    def join_instances(self) -> dict[str, Any]:
        """All instances ended: the step succeeds if they all did (or were allowed to fail)."""
        raw = self.store.step_hashes(self.run_id, [self.step_id])[self.step_id]
        ids = json.loads(raw.get("instances") or "[]")
        hashes = self.store.step_hashes(self.run_id, ids)
        outputs = [_outputs(hashes[i]) for i in ids]
        failed = [
            i
            for i in ids
            if hashes[i].get("status") not in ("succeeded", "skipped")
            and hashes[i].get("allowed_failure") != "1"
        ]
        if failed and self.store.cancel_requested(self.run_id):
            return self._finish(
                StepStatus.CANCELLED,
                outputs=outputs,
                reason=self.store.cancel_reason(self.run_id) or FailureReason.CANCELLED,
                stderr=[f"[runbook] run cancelled; instances not succeeded: {len(failed)}"],
            )
        if failed:
            shown = ", ".join(failed[:20]) + (
                f" and {len(failed) - 20} more" if len(failed) > 20 else ""
            )
            return self._finish(
                StepStatus.FAILED,
                outputs=outputs,
                reason="instance_failed",
                stderr=[f"[runbook] instances not succeeded: {shown}"],
                allowed_failure=self.spec.get("continue_on_error") is True,
            )
        return self._finish(StepStatus.SUCCEEDED, outputs=outputs)

    # ------------------------------------------------------------------ recording

    def _finish(
        self,
        status: StepStatus,
        *,
        exit_code: int | None = None,
        outputs: dict[str, str] | list[Any] | None = None,  # a list: each instance's (fan-in)
        reason: str | None = None,
        stderr: list[str] | None = None,
        history: dict[str, Any] | None = None,
        allowed_failure: bool = False,
        check_terminal: bool = False,
        expect: StepStatus | None = None,
        decision: Decision | None = None,
    ) -> dict[str, Any]:
        failed = status in (StepStatus.FAILED, StepStatus.CANCELLED) and not allowed_failure
        if self.masker:
            outputs = self.masker.mask_value(outputs)
            stderr = self.masker.mask_value(stderr)
        skip: list[str] = []
        children: dict[str, int] = {}
        if self.parent is None:
            # Both, whatever mode this delivery started in: the store applies the skips
            # (canvas) or the joins (dynamic) by the run's mode at the moment of the
            # transition, so a canvas run failing over while this step ran is joined.
            if failed:
                # a canvas will not run what follows a failed step: record it as skipped
                below = self.ctx.graph.descendants(self.step_id)
                skip = [s for s in self.ctx.graph.topological() if s in below]
            children = self._children()
            if failed and self.ctx.hands_off and self.store.run_mode(self.run_id) == CANVAS:
                # steps may run after this failure: dynamic dispatch from here (canvasplan);
                # the FINISH below then joins this step's children
                dispatch.continue_after_failure(
                    self.store, self.run_id, self.settings.lease_seconds
                )
        # Redis full: keep the result and the lease, record once memory is freed (fullredis)
        outcome = wait_while_full(
            lambda: self.store.finish_step(
                self.run_id,
                self.step_id,
                token=self.token,
                status=status,
                workflow=self.ctx.workflow,
                exit_code=exit_code,
                outputs=outputs,
                stderr_tail=stderr,
                reason=reason,
                allowed_failure=allowed_failure,
                attempt=self.attempt,
                skip=skip,
                children=children,
                history=history,
                watch_seconds=self._watch_seconds,
                expect=expect,
                decision=decision,
            ),
            f"recording step {self.step_id} of run {self.run_id} as {status.value}",
            while_waiting=self._keep_lease,
            give_up=worker_stopping,
        )
        if outcome.refused is not None and expect is not None:
            raise InvalidOperation(
                f"step {self.step_id!r} of run {self.run_id} is {outcome.refused}, "
                f"not {expect.value.replace('_', ' ')}"
            )
        if outcome.duplicate and check_terminal:
            return self._replay(outcome.run_status or "")
        self._after(outcome, f"recording {status.value}")
        self.recorded = not outcome.duplicate
        if self.attempt is not None and not outcome.duplicate:
            self._stop_keeping()  # recorded: the lease is gone with it
        if outcome.ready:
            dispatch.publish_steps(self.ctx.snapshot, self.run_id, outcome.ready)
        if self.parent is not None:
            self._instance_ended()
        self._note_successors()
        if outcome.run_status:
            _cache.drop(self.run_id)
            childruns.hand_to_parent(self.store, self.run_id, self.ctx.snapshot, finish_outside)
        if outcome.admitted:
            dispatch.publish_admitted(self.store, outcome.admitted)
        result = {
            "run_id": self.run_id,
            "step": self.step_id,
            "status": status.value,
            "reason": reason or "",
            "exit_code": exit_code,
            "outputs": outputs or {},
        }
        if skip and not outcome.duplicate:
            self._announce_skipped(skip)
        if failed and self.parent is None:
            raise step_failed(status.value, self.step_id, reason, exit_code, stderr or ())
        return result

    def _announce_skipped(self, skip: list[str]) -> None:
        """Steps the store recorded skipped after this failure that will never be tasks."""
        celery_app = getattr(self.task, "app", None)  # none: recorded from outside a task
        if celery_app is None:
            return
        hashes = self.store.step_hashes(self.run_id, skip)
        reasons = {
            sid: h.get("reason") or f"needs {self.step_id} {h.get('status')}"
            for sid, h in hashes.items()
            if h.get("status") == "skipped"
        }
        announce_skipped(celery_app, self.run_id, self.ctx.workflow, reasons)

    def _children(self) -> dict[str, int]:
        if self.parent is not None:
            return {}
        return {c: len(self.ctx.graph.needs[c]) for c in self.ctx.graph.children[self.step_id]}

    @property
    def _member(self) -> str:
        return f"{self.run_id}|{self.step_id}"

    def _note_successors(self) -> None:
        """Tell the hand-on (stored result or task_postrun) what may be ready after this
        step: its children in the DAG. An instance's lane and its step's join are watched
        by ``instance_ended`` itself; when this task recorded that join, the fanned-out
        step hands on with it, and its children are this task's successors."""
        if self.task is None or self.inline:  # an operator's decision; a join done inline
            return
        if not self.settings.broker_url.startswith(("redis", "rediss")):
            return  # an AMQP broker does not lose messages on their way: nothing to watch
        if self.parent is None:
            note_successors(self._member, [Successor(c, n) for c, n in self._children().items()])
        elif self.joined is not None:
            children = self.joined._children().items()
            succ = [Successor(c, n) for c, n in children]
            note_successors(self._member, succ, ended=[self.parent])
        else:
            note_successors(self._member, [])

    @property
    def _watch_seconds(self) -> float | None:
        """How long a step made ready is watched for (recovery.py); None with a broker
        whose messages cannot be looked for (AMQP), where only received steps are."""
        if self.settings.broker_url.startswith(("redis", "rediss")):
            return self.settings.lease_seconds
        return None

    def _keep_lease(self) -> None:
        """While a transition waits for a full Redis: renew this delivery's lease and watch
        (RENEW works on a full Redis), also once the LeaseKeeper thread has stopped."""
        if self.keeper is not None and self.keeper.lost is None:
            self.keeper.renew()

    def _while_full(self, call: Any, what: str) -> Any:
        """``call()``, waiting (lease kept) while Redis is full (fullredis)."""
        return wait_while_full(
            call,
            f"{what} step {self.step_id} of run {self.run_id}",
            while_waiting=self._keep_lease,
            give_up=worker_stopping,
        )

    def _stop_keeping(self) -> None:
        """The transition that ends this delivery's hold went through: stop renewing."""
        if self.keeper is not None:
            self.keeper.stop()

    def _replay(self, status: str) -> dict[str, Any]:
        """A duplicate delivery of a finished step: never run it again, but finish handing on.

        In dynamic mode the join is idempotent, so re-doing it publishes any child that a
        crash between "recorded" and "published" would otherwise have stranded.
        """
        mode = self.mode or self.store.run_mode(self.run_id) or self.ctx.snapshot["mode"]
        childruns.after_replay(self.store, self.run_id, self.ctx.snapshot, finish_outside)
        if self.parent is not None:
            self._instance_ended()  # idempotent: a crash may have come before it
        self._note_successors()  # and its ready successors are watched once it handed on
        if self.parent is None and mode == DYNAMIC:
            ready = self.store.rejoin(self.run_id, self.step_id, self._children())
            if ready:
                dispatch.publish_steps(self.ctx.snapshot, self.run_id, ready)
        elif self.parent is None and status in (StepStatus.FAILED, StepStatus.CANCELLED):
            # canvas: keep Celery from continuing past a step that did not succeed
            raise step_failed(str(status), self.step_id, "already recorded", None)
        return {"run_id": self.run_id, "step": self.step_id, "status": status, "duplicate": True}


def _outputs(h: dict[str, str]) -> Any:
    return json.loads(h["outputs"]) if h.get("outputs") else {}


workerhooks.use_finish_outside(finish_outside)
