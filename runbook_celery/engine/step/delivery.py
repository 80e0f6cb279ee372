"""One delivery of one step: its state, and the order its stages run in.

``StepExecution`` holds what the stages share (the run's context, the step's spec, the
claim's token, attempt and lease) and runs them in order (``execute``): condition → claim
→ environment and Bash under a lease → record → hand on. Each stage is a module of
functions taking the delivery (``claim``, ``condition``, ``environment``, ``bash``,
``record``, ``policy``, ``fanout``, ``handon``), so a stage is tested on its own with a
stand-in task and the store's in-memory double. Stages reach one another only through
this class, which is the one module that imports them all.

This module registers no task and connects no signal: ``finish_outside`` (an operator's
decision, a child run's end) is importable by clients without the worker's hooks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from ...core.settings import Settings, worker_environment
from ...definition import expressions as ex
from ...plan.compile import CANVAS
from ...plan.masking import Masker
from ...store import FinishOutcome, Outcome, RunStore, now_iso
from ...store.events import FailureReason, StepStatus
from ...store.logsink import StepLogSink
from .. import childruns, workerstore
from ..app import app
from ..fullredis import wait_while_full, worker_stopping
from ..lease import LeaseKeeper
from ..runner import BashResult
from ..taskevents import StepFailed, announce_ended
from . import bash, claim, condition, fanout, handon, record
from .context import RunContext, cache

log = logging.getLogger("runbook_celery.worker")


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
        self.values: dict[str, Any] = {}  # an instance's matrix/item values
        if step_id in ctx.steps:
            self.spec = ctx.steps[step_id]
        else:  # an instance "X[3]" of a fanned-out step X
            self.parent = step_id.rsplit("[", 1)[0]
            self.spec = ctx.steps[self.parent]
        self.token = uuid.uuid4().hex
        self.attempt: int | None = None
        self.mode: str | None = None  # from the store when known; a canvas run may fail over
        self.keeper: LeaseKeeper | None = None
        self.claim_sent = 0.0  # boottime of the claim that went through (LeaseKeeper)
        self.inline = False  # run inside another step's task, which hands on for it
        self.recorded = False  # this execution's FINISH went through (not a duplicate)
        self.sent_by_finish: frozenset[str] = frozenset()  # ready children FINISH sent
        self.joined: StepExecution | None = None  # the fan-out step this instance joined
        self.statuses: dict[str, str] = {}  # steps.ID.status, read once
        self.run_status_seen: str | None = None

    def sibling(self, step_id: str) -> StepExecution:
        """Another step of this run, handled within this delivery's task."""
        return StepExecution(self.task, self.settings, self.store, self.ctx, self.run_id, step_id)

    # ------------------------------------------------------------------ the order of stages

    def guarded(self, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body``; a bug in it (not a step failure, not Redis) fails the step with
        reason ``internal_error`` instead of leaving the run to replay it forever."""
        try:
            return body()
        except (Ignore, Retry, Reject, StepFailed, redis.RedisError):
            raise
        except ex.EvaluationError as exc:  # e.g. fromJSON() of text that is not JSON
            return self.finish(
                StepStatus.FAILED,
                reason=FailureReason.BAD_INPUT,
                stderr=[f"[runbook] {exc}"[:2000]],
            )
        except Exception as exc:
            log.exception("step %s of run %s: internal error", self.step_id, self.run_id)
            return self.finish(
                StepStatus.FAILED,
                reason=FailureReason.INTERNAL_ERROR,
                stderr=[f"[runbook] internal error: {type(exc).__name__}: {exc}"[:2000]],
            )

    def execute(self) -> dict[str, Any]:
        """condition → claim → (child run | fan-out | Bash → record), the lease held from
        the claim until the result is recorded, not only while Bash runs."""
        ignore_cancel = False
        check_needs = self.parent is None
        if self.parent is None and self.spec.condition:
            should_run, ignore_cancel, why = condition.condition(self)
            if not should_run:
                return self.finish(StepStatus.SKIPPED, reason=why, check_terminal=True)
            check_needs = False
        elif self.parent:
            self.values = self.store.instance_values(self.run_id, self.step_id)
        decision = claim.start(self, check_needs, ignore_cancel)
        if decision.action != "start":
            return claim.not_started(self, decision)
        self.attempt, self.mode = decision.attempt, decision.mode
        if self.run_status_seen is None:  # run.status as the claim saw it (no read more)
            self.run_status_seen = decision.run_status
        self.keeper = LeaseKeeper(
            workerstore.lease_store(),
            self.run_id,
            self.step_id,
            token=self.token,
            attempt=decision.attempt,
            lease_seconds=self.settings.lease_seconds,
            claimed_at=self.claim_sent,
        ).start()
        try:
            outputs = decision.need_outputs or {}
            if self.parent is None and self.spec.uses:  # a child run (childruns.py)
                return childruns.start_child(self, outputs)
            if self.parent is None and self.spec.fans_out:
                return fanout.fan_out(self, outputs)
            started = now_iso()
            return record.record(self, self._run(outputs, decision.env or {}), started)
        finally:
            self.keeper.stop()

    def join_instances(self) -> dict[str, Any]:
        return fanout.join_instances(self)

    # ------------------------------------------------------------------ what stages share

    def finish(self, status: StepStatus, **fields: Any) -> dict[str, Any]:
        """Record the step's end (``record.finish``) and hand on."""
        return record.finish(self, status, **fields)

    def after_finish(self, outcome: FinishOutcome, skip: list[str]) -> None:
        handon.after_finish(self, outcome, skip, finish_outside)

    def replay(self, status: str) -> dict[str, Any]:
        return handon.replay(self, status, finish_outside)

    def after(self, outcome: Outcome | FinishOutcome, what: str) -> None:
        record.after(self, outcome, what)

    def resolver(self, outputs: dict[str, Any]) -> Callable[[ex.Ref], Any]:
        return condition.resolver(self, outputs)

    def _run(self, need_outputs: dict[str, Any], override: dict[str, str]) -> BashResult:
        return bash.run(self, need_outputs, override)

    def _tick(self, sink: StepLogSink) -> Callable[[], bool | str]:
        return bash.tick(self, sink)

    def _instance_ended(self) -> None:
        fanout.instance_ended(self)

    def children(self) -> dict[str, int]:
        """This step's children in the DAG and how many needs each has (an instance: none)."""
        if self.parent is not None:
            return {}
        graph = self.ctx.graph
        return {c: len(graph.needs[c]) for c in graph.children[self.step_id]}

    @cached_property
    def masker(self) -> Masker:
        """Masks the workflow's `secrets:`: this worker's values, and values an operator
        gave them with `retry --env` anywhere in this run (masking.py)."""
        names = self.ctx.snapshot.secrets
        if not names:
            return Masker(())
        env = worker_environment()
        values = [env[n] for n in names if env.get(n)]
        return Masker(values + self.store.secret_overrides(self.run_id))

    @property
    def max_active(self) -> int:
        return self.ctx.snapshot.max_active_steps

    @property
    def in_canvas(self) -> bool:
        """This delivery of a fanning-out step holds a place in a canvas (not dynamic)."""
        return self.mode == CANVAS and self.task is not None and not self.inline

    @property
    def watch_seconds(self) -> float | None:
        """How long a step made ready is watched for (recovery.py); None with a broker
        whose messages cannot be looked for (AMQP), where only received steps are."""
        if self.settings.broker_url.startswith(("redis", "rediss")):
            return self.settings.lease_seconds
        return None

    def keep_lease(self) -> None:
        """While a transition waits for a full Redis: renew this delivery's lease and watch
        (RENEW works on a full Redis), also once the LeaseKeeper thread has stopped."""
        if self.keeper is not None and self.keeper.lost is None:
            self.keeper.renew()

    def while_full(self, call: Any, what: str) -> Any:
        """``call()``, waiting (lease kept) while Redis is full (fullredis)."""
        return wait_while_full(
            call,
            f"{what} step {self.step_id} of run {self.run_id}",
            while_waiting=self.keep_lease,
            give_up=worker_stopping,
        )

    def stop_keeping(self) -> None:
        """The transition that ends this delivery's hold went through: stop renewing."""
        if self.keeper is not None:
            self.keeper.stop()


def finish_outside(run_id: str, step_id: str, status: StepStatus, **fields: Any) -> None:
    """Record a step's end from outside its task (an operator's decision, a gate's timeout,
    a child run's end), handing on as usual; then tell Flower how the step ended, since
    its task last said it was waiting."""
    settings, store = workerstore.worker_store()
    ctx = cache.get(store, run_id)
    # no task: the stages test for None where an operator's decision can get to
    execution = StepExecution(None, settings, store, ctx, run_id, step_id)  # type: ignore[arg-type]
    report = str(fields.get("reason") or status.value)
    try:
        execution.finish(status, **fields)
    except StepFailed as failure:
        report = str(failure)
    if execution.recorded:
        announce_ended(app, run_id, ctx.workflow, step_id, status.value, report)
