"""The worker log reports an ordinary step failure in one line, not a traceback."""

from __future__ import annotations

import sys
import time

import pytest
from conftest import WorkerProcess

from runbook_celery import submit

pytestmark = [pytest.mark.slow]


# Queues of their own: the session's shared worker must not take (and log) these steps.
LOUD_QUEUE = "runbook-test-logcheck"
QUIET_QUEUE = "runbook-test-quiet"
WORKER_CMD = [sys.executable, "-m", "runbook_celery", "worker"]


@pytest.fixture()
def own_worker(redis_client):  # type: ignore[no-untyped-def]
    w = WorkerProcess("logcheck", queues=LOUD_QUEUE)
    yield w
    w.stop()


def test_an_ordinary_step_failure_is_one_log_line_without_a_traceback(own_worker, write_workflow):
    # a diamond (canvas, a chord) whose member fails: the chord's failure is expected too
    wf = write_workflow("""
name: loud-failure
steps:
  - id: top
    queue: runbook-test-logcheck
    run: "true"
  - id: left
    needs: [top]
    queue: runbook-test-logcheck
    run: |
      echo "left: disk full" >&2
      exit 3
  - id: right
    needs: [top]
    queue: runbook-test-logcheck
    run: "true"
  - id: bottom
    needs: [left, right]
    queue: runbook-test-logcheck
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

    from runbook_celery.engine.taskevents import Parked, StepFailed, step_failed

    failed = step_failed("failed", "left", "exit_code", 3, ["left: disk full"])
    again = pickle.loads(pickle.dumps(failed))
    assert type(again) is StepFailed and str(again) == str(failed)
    parked = pickle.loads(pickle.dumps(Parked("an approval")))
    assert type(parked) is Parked and parked.why == "an approval"


def test_the_worker_command_logs_no_line_per_routine_task_but_keeps_failures(
    tmp_path, write_workflow, redis_client
):
    import os
    import subprocess

    from conftest import ROOT

    log_path = tmp_path / "worker.log"
    name = f"quiet-{os.getpid()}@localhost"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*WORKER_CMD, "-Q", QUIET_QUEUE, "-c", "2", "-n", name],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wf = write_workflow("""
name: quiet
steps:
  - id: ok
    queue: runbook-test-quiet
    run: "true"
  - id: bad
    needs: [ok]
    queue: runbook-test-quiet
    run: exit 3
""")
        final = submit(wf).wait(timeout=90)
        assert final.status == "failed"
        deadline = time.monotonic() + 30
        while "raised expected" not in (text := log_path.read_text()):
            assert time.monotonic() < deadline, text[-4000:]
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = log_path.read_text()
    assert " received" not in text and " succeeded in " not in text, text[-4000:]
    assert "failed step bad: reason exit_code, exit code 3" in text
