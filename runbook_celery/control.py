"""Operator decisions on live runs: pause/resume, approve/reject, retry/skip/abort a failed step.

Every decision is recorded in the run's events with its author and time.
"""

from __future__ import annotations

import getpass
from typing import Any

from .app import app
from .errors import InvalidOperation
from .events import StepStatus
from .gates import Gates
from .settings import Settings, get_settings
from .store import RunStore


def default_author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RunControl:
    """Decisions for one run, as an operator makes them from the CLI or Python."""

    def __init__(self, run_id: str, settings: Settings | None = None) -> None:
        from .api import _store

        self.run_id = run_id
        self.settings = settings or get_settings()
        self.store: RunStore = _store(self.settings)
        self.gates = Gates(self.store)

    def pause(self, by: str | None = None) -> None:
        """No new step starts until resume; running steps finish."""
        self.gates.pause(self.run_id, by or default_author())

    def resume(self, by: str | None = None) -> int:
        """Continue where the run stopped; returns how many waiting steps were released."""
        messages = self.gates.resume(self.run_id, by or default_author())
        for message in messages:
            app.signature(message).apply_async()
        return len(messages)

    def approve(self, step_id: str, by: str | None = None) -> None:
        message = self.gates.open_gate(
            self.run_id,
            step_id,
            expected="awaiting_approval",
            event="step_approved",
            by=by or default_author(),
            field="approved_by",
        )
        if message:
            app.signature(message).apply_async()

    def reject(self, step_id: str, by: str | None = None) -> None:
        self._require(step_id, "awaiting_approval")
        self._event(step_id, "step_rejected", by)
        self._finish(
            step_id,
            StepStatus.FAILED,
            reason="rejected",
            stderr=[f"[runbook] rejected by {by or default_author()}"],
        )

    def retry_step(
        self, step_id: str, env: dict[str, str] | None = None, by: str | None = None
    ) -> None:
        """Run a step waiting for a decision again, optionally with changed environment."""
        import json

        message = self.gates.open_gate(
            self.run_id,
            step_id,
            expected="awaiting_decision",
            event="step_decision_retry",
            by=by or default_author(),
            field="env_override",
            value=json.dumps(env or {}),
        )
        if message:
            app.signature(message).apply_async()

    def skip_step(
        self, step_id: str, outputs: dict[str, str] | None = None, by: str | None = None
    ) -> None:
        """Mark a failed step skipped with supplied outputs; the run goes on."""
        h = self._require(step_id, "awaiting_decision")
        self._event(step_id, "step_decision_skip", by)
        self._finish(
            step_id,
            StepStatus.SKIPPED,
            outputs=dict(outputs or {}),
            allowed_failure=True,
            reason=f"skipped by {by or default_author()}",
        )
        if h.get("parked_sig"):
            import json

            app.signature(json.loads(h["parked_sig"])).apply_async()  # canvas continues

    def abort(self, by: str | None = None) -> None:
        """Fail the run as if its waiting steps had failed without pause."""
        steps = self.store.step_ids(self.run_id)
        waiting = {
            s: h
            for s, h in self.store.step_hashes(self.run_id, steps).items()
            if h.get("status") == "awaiting_decision"
        }
        if not waiting:
            raise InvalidOperation(f"run {self.run_id} has no step awaiting a decision")
        for step_id, h in waiting.items():
            self._event(step_id, "step_decision_abort", by)
            code = h.get("exit_code")
            self._finish(
                step_id,
                StepStatus.FAILED,
                reason=h.get("reason") or "aborted",
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

    def _event(self, step_id: str, etype: str, by: str | None) -> None:
        from .store import now_iso

        k = self.store.keys
        fields: dict[Any, Any] = {
            "type": etype,
            "run_id": self.run_id,
            "step": step_id,
            "by": by or default_author(),
            "ts": now_iso(),
        }
        wf = self.store.r.hget(k.run(self.run_id), "workflow")
        fields["workflow"] = wf.decode() if isinstance(wf, bytes) else (wf or "")
        self.store.r.xadd(k.run_events(self.run_id), fields)
        self.store.r.xadd(k.global_events, fields, maxlen=100_000, approximate=True)

    def _finish(self, step_id: str, status: StepStatus, **fields: Any) -> None:
        from .tasks import finish_outside

        finish_outside(self.run_id, step_id, status, **fields)
        if self.store.r.hget(self.store.keys.run(self.run_id), "status") in (
            b"awaiting_decision",
            "awaiting_decision",
        ):
            self.store.r.hset(self.store.keys.run(self.run_id), "status", "running")
