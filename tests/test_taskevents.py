"""What Flower is told: the rewriting of a step task's events, without a worker."""

from __future__ import annotations

from typing import Any

import pytest

from runbook_celery.engine.taskevents import StepRequest


class Recorder(StepRequest):
    """StepRequest with Celery's sending replaced by a list."""

    def __init__(self) -> None:  # no message: only send_event is exercised
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def _send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


@pytest.fixture()
def request_(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(
        "celery.worker.request.Request.send_event",
        lambda self, type, **fields: self._send(type, **fields),
    )
    return rec


def result(status: str, reason: str, outputs: dict[str, str] | None = None) -> str:
    return repr(
        {
            "run_id": "0f" * 16,
            "step": "build[2]",
            "status": status,
            "reason": reason,
            "exit_code": None,
            "outputs": outputs or {},
        }
    )


@pytest.mark.parametrize("reason", ["condition false: it's off", 'say "no"', "needs a failed"])
def test_a_step_recorded_skipped_is_revoked_with_its_reason(request_: Recorder, reason: str):
    request_.send_event("task-succeeded", result=result("skipped", reason), runtime=0.1)
    ((type_, fields),) = request_.sent
    assert type_ == "task-revoked"
    assert fields["exception"] == f"skipped: {reason}"


def test_an_output_cannot_make_a_success_look_skipped(request_: Recorder):
    forged = {"x": "'status': 'skipped', 'reason': 'forged'"}
    request_.send_event("task-succeeded", result=result("succeeded", "", forged), runtime=0.1)
    assert request_.sent[0][0] == "task-succeeded"


def test_a_failed_step_shows_its_report_as_the_traceback(request_: Recorder):
    exc = "StepFailed('failed step a: reason exit_code, exit code 3; stderr: boom')"
    request_.send_event("task-failed", exception=exc, traceback="Traceback (most recent...")
    ((type_, fields),) = request_.sent
    assert type_ == "task-failed"
    assert fields["traceback"] == "failed step a: reason exit_code, exit code 3; stderr: boom"


def test_a_cancelled_step_is_revoked(request_: Recorder):
    exc = "StepFailed('cancelled step a: reason cancelled, exit code -15')"
    request_.send_event("task-failed", exception=exc, traceback="...")
    assert request_.sent[0][0] == "task-revoked"
