"""Run history: `runbook-celery runs`, newest first, filters, retention."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import run_cli

from runbook_celery import submit
from runbook_celery.store.history import list_runs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker"), pytest.mark.timeout(90)]


def _workflow(write_workflow, name: str):  # type: ignore[no-untyped-def]
    return write_workflow(
        f"name: {name}\nparams:\n  code: '0'\nsteps:\n  - id: only\n"
        "    run: exit ${{ params.code }}\n",
        f"{name}.yaml",
    )


def test_runs_lists_newest_first_and_filters_by_status_and_workflow(write_workflow):
    # Given three runs of one workflow (ok, failed, ok) and one of another
    name = f"hist-{uuid.uuid4().hex[:6]}"
    wf = _workflow(write_workflow, name)
    other = submit(_workflow(write_workflow, f"{name}-other"))
    first = submit(wf, {"code": "0"})
    failed = submit(wf, {"code": "5"})
    last = submit(wf, {"code": "0"})
    for run in (other, first, failed, last):
        run.wait(timeout=60)

    everything = run_cli("runs", "--workflow", name, "--json")
    assert everything.returncode == 0, everything.stderr
    listed = json.loads(everything.stdout)
    # Then they come newest first, with status, times, duration and trigger params
    assert [r["id"] for r in listed] == [last.id, failed.id, first.id]
    assert [r["status"] for r in listed] == ["succeeded", "failed", "succeeded"]
    assert listed[1]["params"] == {"code": "5"}
    assert all(r["started_at"] and r["finished_at"] for r in listed)
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in listed)

    failed_only = json.loads(
        run_cli("runs", "--workflow", name, "--status", "failed", "--json").stdout
    )
    assert [r["id"] for r in failed_only] == [failed.id]

    limited = json.loads(run_cli("runs", "--workflow", name, "--limit", "2", "--json").stdout)
    assert [r["id"] for r in limited] == [last.id, failed.id]

    table = run_cli("runs", "--workflow", name, "--status", "succeeded")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "PARAMS"]
    assert [line.split()[0] for line in lines[1:]] == [last.id, first.id]
    assert "code=0" in lines[1]


def test_runs_rejects_an_unknown_status():
    res = run_cli("runs", "--status", "exploded")
    assert res.returncode == 2
    assert "exploded" in res.stderr


def test_a_finished_run_expires_with_its_logs_and_events_after_the_retention(
    write_workflow, store, redis_client
):
    # Given a finished run that printed something
    run = submit(_workflow(write_workflow, "retained"))
    assert run.wait(timeout=60).status == "succeeded"
    run_keys = [
        k.decode() for k in redis_client.scan_iter(match=f"{store.keys.run(run.id)}*", count=1000)
    ]
    # Then every key of the run (record, steps, events, logs) expires after RUNBOOK_RETENTION
    assert store.keys.run_events(run.id) in run_keys
    ttls = {k: redis_client.ttl(k) for k in run_keys}
    assert all(0 < ttl <= store.retention for ttl in ttls.values()), ttls

    # When the retention has passed (what Redis expiry does: the run's keys vanish)
    redis_client.delete(*run_keys)
    # Then the run is gone from history, and the index entry is pruned, nothing else
    listed = [r.id for r in list_runs(store, limit=1000)]
    assert run.id not in listed
    assert redis_client.zscore(store.keys.runs_index, run.id) is None
    assert run_cli("status", run.id).returncode == 4
    assert run_cli("logs", run.id).returncode == 4
    assert run_cli("events", "--run", run.id).returncode == 4


def test_fanned_out_instances_expire_with_their_run(write_workflow, store, redis_client):
    wf = write_workflow(
        "name: fan-expiry\nsteps:\n  - id: fan\n    matrix:\n      n: [1, 2]\n"
        "    run: echo ${{ matrix.n }}\n"
    )
    run = submit(wf)
    assert run.wait(timeout=60).status == "succeeded"
    keys = [k.decode() for k in redis_client.scan_iter(match=f"{store.keys.run(run.id)}*")]
    assert store.keys.logs(run.id, "fan[0]") in keys
    forever = [k for k in keys if redis_client.ttl(k) == -1]
    assert not forever
