"""The worker log reports an ordinary step failure in one line, not a traceback."""

from __future__ import annotations

import time

import pytest
from conftest import WorkerProcess

from runbook_celery import submit

pytestmark = [pytest.mark.slow]


@pytest.fixture()
def own_worker(redis_client):  # type: ignore[no-untyped-def]
    w = WorkerProcess("logcheck")
    yield w
    w.stop()


def test_an_ordinary_step_failure_is_one_log_line_without_a_traceback(own_worker, write_workflow):
    # a diamond (canvas, a chord) whose member fails: the chord's failure is expected too
    wf = write_workflow("""
name: loud-failure
steps:
  - id: top
    run: "true"
  - id: left
    needs: [top]
    run: |
      echo "left: disk full" >&2
      exit 3
  - id: right
    needs: [top]
    run: "true"
  - id: bottom
    needs: [left, right]
    run: "true"
""")
    final = submit(wf).wait(timeout=60)
    assert final.mode == "canvas" and final.status == "failed", final.to_dict()
    # the worker logs the task's end after it recorded the step: wait for that line
    deadline = time.monotonic() + 30
    while "raised expected" not in (log := own_worker.log_path.read_text()):
        assert time.monotonic() < deadline, log[-4000:]
        time.sleep(0.05)
    assert "left: disk full" in log  # the failure is reported, with the script's stderr
    assert "Traceback (most recent call last)" not in log, log[-4000:]
    assert "ChordError" not in log, log[-4000:]
    failure_lines = [ln for ln in log.splitlines() if "failed step left" in ln]
    assert len(failure_lines) == 1, failure_lines


def test_the_exceptions_celery_carries_between_processes_pickle_as_they_are():
    import pickle

    from runbook_celery.taskevents import Parked, StepFailed, step_failed

    failed = step_failed("failed", "left", "exit_code", 3, ["left: disk full"])
    again = pickle.loads(pickle.dumps(failed))
    assert type(again) is StepFailed and str(again) == str(failed)
    parked = pickle.loads(pickle.dumps(Parked("an approval")))
    assert type(parked) is Parked and parked.why == "an approval"
