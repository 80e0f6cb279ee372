"""What Flower is told: the rewriting of a step task's events, without a worker."""

from __future__ import annotations

from typing import Any

import pytest

from runbook_celery.engine.taskevents import StepRequest, announce_ended


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


class Dispatcher:
    """Celery's event dispatcher, keeping what it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def send(self, type: str, **fields: Any) -> None:
        self.sent.append((type, fields))


class App:
    def __init__(self) -> None:
        self.dispatcher = Dispatcher()
        self.events = self

    def default_dispatcher(self) -> Dispatcher:
        return self.dispatcher


@pytest.mark.parametrize(
    ("status", "event", "shown"),
    [
        ("failed", "task-failed", "exception"),
        ("skipped", "task-revoked", "exception"),
        ("cancelled", "task-revoked", "exception"),
        ("succeeded", "task-succeeded", "result"),
    ],
)
def test_a_step_ended_from_outside_its_task_is_shown_as_it_ended(
    status: str, event: str, shown: str
) -> None:
    app = App()
    announce_ended(app, "ab" * 16, "deploy", "ship", status, "rejected by ann")  # type: ignore[arg-type]
    ((sent, fields),) = app.dispatcher.sent
    assert sent == event
    assert fields["uuid"] == f"{'ab' * 16}.ship" and fields["name"] == "deploy.ship"
    assert "rejected by ann" in fields[shown]


def test_a_broker_hiccup_while_announcing_never_fails_the_caller() -> None:
    class Down:
        def default_dispatcher(self) -> Any:
            raise ConnectionError("broker down")

    app = App()
    app.events = Down()  # type: ignore[assignment]
    announce_ended(app, "ab" * 16, "deploy", "ship", "failed", "x")  # type: ignore[arg-type]
