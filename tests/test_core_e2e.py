"""Core regressions end to end: reruns of skipped conditional steps, max_active_steps slots
across a lost worker, and forged messages."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from celery.result import AsyncResult
from conftest import QUEUE, SESSION, WorkerProcess, wait_for_event

from runbook_celery import submit
from runbook_celery.client.api import rerun
from runbook_celery.engine.app import FANIN_TASK, STEP_TASK, app

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("original", ["failed", "succeeded"])
def test_a_rerun_with_a_skipped_condition_step_that_needs_only_reused_steps_ends(
    original, write_workflow, tmp_path
):
    # Given cleanup (needs build, if: failure()) skipped in a first run, with flaky
    # failing in it (or, second case, the first run succeeding)
    flag = tmp_path / "flaky-passes"
    if original == "succeeded":
        flag.touch()
    wf = write_workflow(f"""
name: rerun-skipped-condition
steps:
  - id: build
    run: echo "v=1" >> "$RUNBOOK_OUTPUT"
  - id: cleanup
    needs: [build]
    if: ${{{{ failure() }}}}
    run: echo cleaning
  - id: flaky
    run: |
      if [ ! -e {flag} ]; then touch {flag}; exit 1; fi
""")
    first = submit(wf).wait(timeout=60)
    assert first.status == original
    assert first.steps["cleanup"].status == "skipped"

    # When it is rerun so that cleanup runs again and build is reused
    if original == "failed":
        again = rerun(first.id, from_failed=True)
    else:
        again = rerun(first.id, from_step="flaky")
    final = again.wait(timeout=45)

    # Then the rerun ends: cleanup's condition sees the reused build as succeeded
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["build"].reused and final.steps["build"].status == "succeeded"
    assert final.steps["cleanup"].status == "skipped"
    assert final.steps["flaky"].status == "succeeded"


@pytest.mark.timeout(180)
def test_max_active_steps_slot_of_a_lost_worker_goes_with_its_step(write_workflow, tmp_path, store):
    # Given max_active_steps 1, and long running (first execution never ends by itself)
    # on a worker that is about to be SIGKILLed, with other waiting for the slot
    queue = f"slots-{SESSION}"
    seen = tmp_path / "seen"
    wf = write_workflow(f"""
name: one-slot
max_active_steps: 1
steps:
  - id: long
    queue: {queue}
    run: |
      if [ ! -e {seen} ]; then touch {seen}; sleep 300 & wait; fi
  - id: other
    queue: {queue}
    run: "true"
""")
    doomed = WorkerProcess("slots-doomed", queues=queue, concurrency=2)
    rescuer = None
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "long")
        # When the worker dies and another one takes over
        rescuer = WorkerProcess("slots-rescuer", queues=queue, concurrency=2)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.stop()
        # Then the redelivered step does not wait behind its own slot: the run ends
        final = run.wait(timeout=90)
    finally:
        doomed.stop()
        if rescuer is not None:
            rescuer.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["long"].attempts == 2
    assert final.steps["other"].status == "succeeded"
    assert store.r.scard(f"{store.keys.run(run.id)}:active") == 0


def _send(task: str, run_id: str, step_id: str) -> dict:
    """A message as anyone with access to the broker could send it."""
    result = app.signature(task, args=(run_id, step_id), immutable=True).apply_async(
        task_id=f"forged-{uuid.uuid4().hex}", queue=QUEUE
    )
    return AsyncResult(result.id, app=app).get(timeout=30, propagate=False)


@pytest.mark.timeout(120)
def test_messages_for_steps_instances_or_runs_the_record_lacks_are_dropped(
    worker, write_workflow, store
):
    # Given a finished run of a -> b (b does not fan out)
    wf = write_workflow("""
name: forged-target
steps:
  - id: a
    run: "true"
  - id: b
    needs: [a]
    run: echo "ran=1" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded"
    before = store.events(final.id)

    # When messages arrive for an instance b[7] of b, for a step it does not have, for
    # the fan-in of a step that does not fan out, and for a run that does not exist
    answers = [
        _send(STEP_TASK, final.id, "b[7]"),
        _send(STEP_TASK, final.id, "nope"),
        _send(FANIN_TASK, final.id, "b"),
        _send(STEP_TASK, "no-such-run", "a"),
    ]

    # Then each is dropped, with a log line, and the record is untouched
    assert [a["status"] for a in answers] == ["unknown", "unknown", "unknown", "gone"]
    record = store.get_run(final.id)
    assert record.status == "succeeded" and "b[7]" not in record.steps
    assert store.r.hget(store.keys.run(final.id), "remaining") in (b"0", "0")
    assert store.r.exists(store.keys.step(final.id, "b[7]")) == 0
    assert store.events(final.id) == before
    log = Path(worker.log_path).read_text()
    assert f"dropped runbook.step for step 'b[7]': run {final.id} has no such step" in log
    assert "dropped runbook.step for step 'a': run no-such-run does not exist" in log
