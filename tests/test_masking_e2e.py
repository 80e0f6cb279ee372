"""A real worker masks every form of a secret a step prints, and values given by retry --env."""

from __future__ import annotations

import json

import pytest
from conftest import SESSION, WorkerProcess, run_cli, wait_for_event

from runbook_celery import submit
from runbook_celery.engine.app import app
from runbook_celery.engine.outputstream import LINE_LIMIT
from runbook_celery.plan.masking import encoded_forms

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TOKEN = "tok-9f8e/7d6c+5b4a?&="  # characters that URL encoding and base64 change
NEW = "n3w-t0ken-after-retry"

STEPS = f"""
  - id: leak
    queue: {{queue}}
    run: |
      echo "plain $DEPLOY_TOKEN"
      printf %s "$DEPLOY_TOKEN" | base64
      echo "x$DEPLOY_TOKEN" | base64 -w 0; echo
      echo "xy$DEPLOY_TOKEN" | base64 | tr '+/' '-_'
      printf %s "$DEPLOY_TOKEN" | xxd -p
      printf %s "$DEPLOY_TOKEN" | xxd -p | tr a-f A-F
      jq -rn --arg t "$DEPLOY_TOKEN" '$t | @uri'
      printf "folded:%s:end" "$DEPLOY_TOKEN" | fold -w 7; echo
      printf "%{LINE_LIMIT - 5}s%s after the cut\\n" "" "$DEPLOY_TOKEN"
      printf "%{LINE_LIMIT - 5}s%s after the cut\\n" "" "$DEPLOY_TOKEN" >&2
      echo "b64=$(printf %s "$DEPLOY_TOKEN" | base64)" >> "$RUNBOOK_OUTPUT"
  - id: flaky
    needs: [leak]
    queue: {{queue}}
    on_failure: pause
    run: |
      echo "token is $DEPLOY_TOKEN, as hex $(printf %s "$DEPLOY_TOKEN" | xxd -p)"
      [ "$DEPLOY_TOKEN" = "{NEW}" ] || {{{{ echo "rejected $DEPLOY_TOKEN" >&2; exit 5; }}}}
      echo "used=$DEPLOY_TOKEN" >> "$RUNBOOK_OUTPUT"
"""


def _forms(value: str) -> list[str]:
    return [f.decode() for f in encoded_forms(value)]


def test_no_form_of_a_secret_reaches_logs_status_events_or_results(write_workflow, store):
    queue = f"masking-{SESSION}"
    worker = WorkerProcess("masking", queues=queue, concurrency=1, env={"DEPLOY_TOKEN": TOKEN})
    try:
        wf = write_workflow(
            "name: masked\nsecrets: [DEPLOY_TOKEN]\nsteps:" + STEPS.format(queue=queue)
        )
        run = submit(wf)
        wait_for_event(store, run.id, "step_awaiting_decision", "flaky", timeout=90)
        retry = run_cli("retry", run.id, "flaky", "--env", f"DEPLOY_TOKEN={NEW}")
        assert retry.returncode == 0, retry.stderr
        final = run.wait(timeout=90)
    finally:
        worker.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["leak"].outputs == {"b64": "***"}
    assert final.steps["flaky"].outputs == {"used": "***"}
    status = run_cli("status", run.id, "--json")
    control = json.loads(status.stdout)["steps"]["flaky"]["control"]
    assert json.loads(control["env_override"]) == {"DEPLOY_TOKEN": "***"}
    logs = run_cli("logs", run.id)
    everything = {
        "logs": logs.stdout + logs.stderr,
        "status --json": status.stdout,
        "status": run_cli("status", run.id).stdout,
        "events": json.dumps([e for _, e in store.events(run.id)]),
        "results": json.dumps([app.AsyncResult(f"{run.id}.{s}").result for s in final.steps]),
    }
    for where, text in everything.items():
        joined = text.replace("\n", "")  # the folded line, and base64 wrapped at 76
        for value in (TOKEN, NEW):
            for form in _forms(value):
                assert form not in text and form not in joined, (where, form)
    leak = run_cli("logs", run.id, "leak")
    shown = leak.stdout + leak.stderr
    assert "plain ***" in shown and "folded:***:end" in shown.replace("\n", "")
    long_lines = [ln for ln in shown.splitlines() if len(ln) > LINE_LIMIT - 10]
    assert len(long_lines) == 2 and all("***" in ln[-20:] for ln in long_lines)
    flaky = run_cli("logs", run.id, "flaky")
    assert "rejected ***" in flaky.stderr  # the worker's own value, first attempt
    assert "token is ***, as hex ***" in flaky.stdout  # the value given with retry --env
