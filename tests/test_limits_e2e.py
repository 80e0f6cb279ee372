"""Limits end to end: hostile group values, instance caps, large fan-outs, a full Redis."""

from __future__ import annotations

import pytest
from conftest import SESSION, run_cli, wait_for_event

from runbook_celery import Run, submit

pytestmark = [pytest.mark.slow]

GROUP = """
name: deploy
params:
  env: prod
concurrency: {{group: "deploy-{session}-${{{{ params.env }}}}", limit: 1, on_conflict: queue}}
steps:
  - id: go
    run: while [ ! -e {release} ]; do sleep 0.02; done
"""


def test_a_group_value_cannot_name_another_groups_key(worker, write_workflow, tmp_path, store):
    """`env=prod:queue` once made the queue list of group `prod` its own active set."""
    release = tmp_path / "release"
    wf = write_workflow(GROUP.format(session=SESSION, release=release))
    hostile = submit(wf, {"env": "prod:queue"})
    wait_for_event(store, hostile.id, "step_started", "go")
    first = submit(wf, {"env": "prod"})
    wait_for_event(store, first.id, "step_started", "go")
    res = run_cli("trigger", str(wf), "-p", "env=prod")
    assert res.returncode == 0, res.stderr  # was 3: "broker ... unreachable" (WRONGTYPE)
    second = res.stdout.strip()
    assert store.run_status(second) == "queued"
    release.touch()
    assert hostile.wait(timeout=60).status == "succeeded"
    a = first.wait(timeout=60)
    b = Run(second).wait(timeout=60)
    assert a.status == b.status == "succeeded"
    assert b.steps["go"].started_at >= a.steps["go"].finished_at
