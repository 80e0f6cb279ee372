"""The result backend's part in delivery: what a chord counts as a failed member."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import states
from celery.backends.redis import RedisBackend

from runbook_celery.engine.app import FANIN_TASK, STEP_TASK, app
from runbook_celery.engine.taskevents import StepFailed


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What reaches Celery's chord counter (replaced: no Redis needed)."""
    seen: list[tuple[str, Any]] = []

    def count(self: Any, request: Any, state: str, result: Any, **_: Any) -> None:
        seen.append((state, result))

    monkeypatch.setattr(RedisBackend, "on_chord_part_return", count)
    return seen


def _member(task: str = STEP_TASK) -> SimpleNamespace:
    return SimpleNamespace(task=task, id="run.a", group="run.group1", chord={"task": "x"})


def test_a_step_task_that_could_not_record_is_not_a_failed_chord_member(counted):
    # Given a chord member whose result (or transition) write timed out in a partition
    # When Celery reports it as a failure to the chord
    out = app.backend.on_chord_part_return(
        _member(), states.FAILURE, redis.TimeoutError("Timeout reading from socket")
    )
    # Then the chord does not count it: the step, still watched, is continued by the
    # reconciler, instead of a ChordError that would never run the chord body
    assert out is None and counted == []


def test_a_step_that_failed_and_a_success_still_count(counted):
    failed = StepFailed("failed step a: reason exit_code, exit code 1")
    app.backend.on_chord_part_return(_member(), states.FAILURE, failed)
    app.backend.on_chord_part_return(_member(), states.SUCCESS, {"status": "succeeded"})
    app.backend.on_chord_part_return(_member(FANIN_TASK), states.FAILURE, KeyError("x"))
    assert [state for state, _ in counted] == [states.FAILURE, states.SUCCESS, states.FAILURE]
