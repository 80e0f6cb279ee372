"""`secrets:` values from the worker's environment are masked everywhere we record them."""

from __future__ import annotations

import json

import pytest
from conftest import SESSION, WorkerProcess, run_cli

from runbook_celery import submit
from runbook_celery.engine.app import app

pytestmark = [pytest.mark.slow]

TOKEN = "tok-9f8e7d6c5b4a"


def test_secret_values_are_masked_in_logs_outputs_events_and_results(write_workflow, store):
    queue = f"secret-{SESSION}"
    worker = WorkerProcess("secret", queues=queue, concurrency=1, env={"DEPLOY_TOKEN": TOKEN})
    try:
        wf = write_workflow(f"""
name: secretive
secrets: [DEPLOY_TOKEN]
steps:
  - id: use
    queue: {queue}
    run: |
      echo "stdout has $DEPLOY_TOKEN"
      echo "stderr has $DEPLOY_TOKEN" >&2
      echo "leak=prefix-$DEPLOY_TOKEN-suffix" >> "$RUNBOOK_OUTPUT"
  - id: fail
    needs: [use]
    queue: {queue}
    run: |
      echo "failing with $DEPLOY_TOKEN" >&2
      exit 3
""")
        run = submit(wf)
        final = run.wait(timeout=60)
    finally:
        worker.stop()
    assert final.status == "failed"
    assert final.steps["use"].outputs == {"leak": "prefix-***-suffix"}
    assert "failing with ***" in final.steps["fail"].stderr_tail
    everything = [
        json.dumps(final.to_dict()),
        run_cli("status", run.id).stdout,
        run_cli("logs", run.id).stdout + run_cli("logs", run.id).stderr,
        json.dumps([e for _, e in store.events(run.id)]),
        json.dumps(app.AsyncResult(f"{run.id}.use").result),  # what Flower shows as result
    ]
    for text in everything:
        assert TOKEN not in text
    logs = run_cli("logs", run.id, "use")
    assert "stdout has ***" in logs.stdout and "stderr has ***" in logs.stderr
