"""Operator decisions on live runs: pause/resume, approve/reject, retry/skip/abort a failed step.

Every decision is recorded in the run's events with its author and time.
"""

from __future__ import annotations

import contextlib
import getpass
import json
from typing import Any

from ..core.errors import InvalidOperation, RunNotFound
from ..core.settings import Settings, get_settings
from ..engine.app import app
from ..engine.childruns import live_children
from ..engine.step.delivery import finish_outside
from ..store import Decision, RunStore, redisconn
from ..store.events import EventType, FailureReason, StepStatus
from ..store.gates import Gates
from ..store.redisconn import backend_errors, check_writable, client_for


def default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RunControl:
    """Decisions for one run, as an operator makes them from the CLI or Python.

    Every decision raises BackendUnavailable (exit 3) when Redis or the broker is down or
    refuses writes (full), RunNotFound or InvalidOperation when it does not apply.
    """

    def __init__(self, run_id: str, settings: Settings | None = None) -> None:
        self.run_id = run_id
        self.settings = settings or get_settings()
        self.store: RunStore = redisconn.store_for(self.settings)
        self.gates = Gates(self.store)

    def _check_writable(self) -> None:
        """Refuse a decision up front when Redis (or a Redis broker) would refuse writes.

        A decision opens a gate in Redis and then publishes the parked step; a gate opened
        whose step could not be published would leave the run hanging. So a Redis that is
        full, read-only or down is found out before the first write, changing nothing.
        """
        probe = f"{self.settings.prefix}:writable-probe"
        check_writable(self.store.r, probe)
        broker = self.settings.broker_url
        if broker != self.settings.redis_url and broker.startswith(("redis:", "rediss:")):
            check_writable(client_for(broker), probe)

    def pause(self, by: str | None = None) -> None:
        """No new step starts until resume; running steps finish."""
        with backend_errors(f"pause run {self.run_id}"):
            self._check_writable()
            self.gates.pause(self.run_id, by or default_author())
        for child in live_children(self.store, self.run_id):  # uses: steps' runs pause too
            with contextlib.suppress(InvalidOperation, RunNotFound):
                RunControl(child, self.settings).pause(by)

    def resume(self, by: str | None = None) -> int:
        """Continue where the run stopped; returns how many waiting steps were released."""
        with backend_errors(f"resume run {self.run_id}"):
            self._check_writable()
            messages = self.gates.resume(self.run_id, by or default_author())
            for message in messages:
                app.signature(message).apply_async()
        released = len(messages)
        for child in live_children(self.store, self.run_id):
            with contextlib.suppress(InvalidOperation, RunNotFound):
                released += RunControl(child, self.settings).resume(by)
        return released

    def approve(self, step_id: str, by: str | None = None) -> None:
        with backend_errors(f"approve step {step_id} of run {self.run_id}"):
            self._check_writable()
            message = self.gates.open_gate(
                self.run_id,
                step_id,
                expected=StepStatus.AWAITING_APPROVAL,
                event=EventType.STEP_APPROVED,
                by=by or default_author(),
                field="approved_by",
            )
            if message:
                app.signature(message).apply_async()

    def reject(self, step_id: str, by: str | None = None) -> None:
        with backend_errors(f"reject step {step_id} of run {self.run_id}"):
            self._check_writable()
            self._reject(step_id, by)

    def _reject(self, step_id: str, by: str | None) -> None:
        self._require(step_id, StepStatus.AWAITING_APPROVAL)
        self._decide(
            step_id,
            StepStatus.AWAITING_APPROVAL,
            StepStatus.FAILED,
            event=EventType.STEP_REJECTED,
            by=by,
            reason=FailureReason.REJECTED,
            stderr=[f"[runbook] rejected by {by or default_author()}"],
        )

    def retry_step(
        self, step_id: str, env: dict[str, str] | None = None, by: str | None = None
    ) -> None:
        """Run a step waiting for a decision again, optionally with changed environment."""
        with backend_errors(f"retry step {step_id} of run {self.run_id}"):
            self._check_writable()
            message = self.gates.open_gate(
                self.run_id,
                step_id,
                expected=StepStatus.AWAITING_DECISION,
                event=EventType.STEP_DECISION_RETRY,
                by=by or default_author(),
                field="env_override",
                value=json.dumps(env or {}),
                secrets=self._secret_values(env or {}),
            )
            if message:
                app.signature(message).apply_async()

    def _secret_values(self, env: dict[str, str]) -> list[str]:
        """Values ``env`` gives to names the workflow lists in ``secrets:``."""
        if not env:
            return []
        names = set(self.store.snapshot(self.run_id).get("secrets") or [])
        return [value for name, value in env.items() if name in names and value]

    def skip_step(
        self, step_id: str, outputs: dict[str, str] | None = None, by: str | None = None
    ) -> None:
        """Mark a failed step skipped with supplied outputs; the run goes on."""
        with backend_errors(f"skip step {step_id} of run {self.run_id}"):
            self._check_writable()
            self._skip(step_id, outputs, by)

    def _skip(self, step_id: str, outputs: dict[str, str] | None, by: str | None) -> None:
        h = self._require(step_id, StepStatus.AWAITING_DECISION)
        self._decide(
            step_id,
            StepStatus.AWAITING_DECISION,
            StepStatus.SKIPPED,
            event=EventType.STEP_DECISION_SKIP,
            by=by,
            outputs=dict(outputs or {}),
            allowed_failure=True,
            reason=f"skipped by {by or default_author()}",
        )
        if h.get("parked_sig"):
            app.signature(json.loads(h["parked_sig"])).apply_async()  # canvas continues

    def abort(self, by: str | None = None) -> None:
        """Fail the run as if its waiting steps had failed without pause."""
        with backend_errors(f"abort run {self.run_id}"):
            self._check_writable()
            self._abort(by)

    def _abort(self, by: str | None) -> None:
        steps = self.store.step_ids(self.run_id)
        waiting = {
            s: h
            for s, h in self.store.step_hashes(self.run_id, steps).items()
            if h.get("status") == StepStatus.AWAITING_DECISION
        }
        if not waiting:
            raise InvalidOperation(f"run {self.run_id} has no step awaiting a decision")
        for step_id, h in waiting.items():
            code = h.get("exit_code")
            self._decide(
                step_id,
                StepStatus.AWAITING_DECISION,
                StepStatus.FAILED,
                event=EventType.STEP_DECISION_ABORT,
                by=by,
                reason=h.get("reason") or FailureReason.ABORTED,
                exit_code=int(code) if code not in (None, "") else None,
                stderr=[f"[runbook] aborted by {by or default_author()}"],
            )

    # ------------------------------------------------------------------ helpers

    def _require(self, step_id: str, status: str) -> dict[str, str]:
        h = self.store.step_hashes(self.run_id, [step_id])[step_id]
        if h.get("status") != status:
            raise InvalidOperation(
                f"step {step_id!r} of run {self.run_id} is {h.get('status', 'missing')}, "
                f"not {status.replace('_', ' ')}"
            )
        return h

    def _decide(
        self,
        step_id: str,
        expect: StepStatus,
        status: StepStatus,
        *,
        event: EventType,
        by: str | None,
        **fields: Any,
    ) -> None:
        """Record the decision and the step's end in one transition (FINISH), refused if
        the step left ``expect`` since it was read (another operator, a timeout, a cancel)."""
        decision = Decision(event.value, by or default_author())
        finish_outside(self.run_id, step_id, status, expect=expect, decision=decision, **fields)
