"""Flower against a real worker and Redis: step names, run ids, states, and no secrets.

Flower builds its view from task events only, so the fixture first waits until Flower
has heard a heartbeat from our worker (its event consumer is live), then runs workflows.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from observe_helpers import FlowerProcess, chromium, flower_running, run_chromium

from runbook_celery import RunRecord, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PARAM_SECRET = "s3cr3t-param-value"
OUTPUT_SECRET = "s3cr3t-output-value"
NIGHTLY = f"""
name: nightly
params:
  token: {PARAM_SECRET}
steps:
  - id: checkout
    run: echo "sha=abc123" >> "$RUNBOOK_OUTPUT"
  - id: build
    needs: [checkout]
    run: echo "secret={OUTPUT_SECRET}" >> "$RUNBOOK_OUTPUT"
  - id: lint
    needs: [checkout]
    run: echo "lint ok"
  - id: test
    needs: [build]
    run: test -n "${{{{ params.token }}}}"
  - id: docs
    needs: [build, lint]
    run: |
      echo "docs: missing index" >&2
      exit 1
"""
FLOWER_STATE = {"succeeded": "SUCCESS", "failed": "FAILURE"}


@dataclass
class FlowerScene:
    flower: FlowerProcess
    runs: list[RunRecord]
    tasks: dict[str, dict[str, Any]]  # Flower's /api/tasks answer for our runs


@pytest.fixture(scope="module")
def scene(worker, tmp_path_factory) -> Iterator[FlowerScene]:  # type: ignore[no-untyped-def]
    log_dir = tmp_path_factory.mktemp("flower")
    with flower_running(log_dir) as flower:
        flower.wait_until(lambda: flower.get("/healthcheck") == "OK", "healthy")
        flower.wait_until(
            lambda: [
                w for w in flower.get("/workers?json=1")["data"] if w["hostname"] == worker.name
            ],
            f"a heartbeat from {worker.name}",
        )
        nightly = log_dir / "nightly.yaml"
        nightly.write_text(NIGHTLY)
        handles = [submit(ROOT / "definitions" / "diamond.yaml"), submit(nightly)]
        runs = [h.wait(timeout=60) for h in handles]
        expected = sum(1 for r in runs for s in r.steps.values() if s.status in FLOWER_STATE)

        def all_final() -> dict[str, Any] | None:
            tasks = {}
            for r in runs:
                tasks.update(flower.get(f"/api/tasks?search={r.id}"))
            done = [t for t in tasks.values() if t["state"] in FLOWER_STATE.values()]
            return tasks if len(done) == expected else None

        tasks = flower.wait_until(all_final, "every step in a final state")
        yield FlowerScene(flower, runs, tasks)


def test_flower_lists_every_step_as_workflow_dot_step_with_its_state(scene):
    for run in scene.runs:
        mine = {t["name"]: t for t in scene.tasks.values() if t["root_id"] == run.id}
        ran = {sid: s for sid, s in run.steps.items() if s.status in FLOWER_STATE}
        assert sorted(mine) == sorted(f"{run.workflow}.{sid}" for sid in ran)
        for sid, step in ran.items():
            assert mine[f"{run.workflow}.{sid}"]["state"] == FLOWER_STATE[step.status]
    nightly = next(r for r in scene.runs if r.workflow == "nightly")
    assert nightly.steps["docs"].status == "failed"  # the scene has a failure to show


def test_flower_shows_and_finds_the_run_id_in_args_and_groups_a_run_by_root_id(scene):
    for run in scene.runs:
        found = scene.flower.get(f"/api/tasks?search=args:{run.id}")
        ran = [sid for sid, s in run.steps.items() if s.status in FLOWER_STATE]
        assert sorted(t["args"] for t in found.values()) == sorted(
            f"run={run.id} step={sid}" for sid in ran
        )
        for task_id in found:
            info = scene.flower.get(f"/api/task/info/{task_id}")
            assert info["root_id"] == run.id


def test_flower_shows_no_trigger_params(scene):
    for task_id in scene.tasks:
        info = scene.flower.get(f"/api/task/info/{task_id}")
        assert PARAM_SECRET not in str(info)
        assert len(str(info.get("args"))) < 200 and info.get("kwargs") == "{}"


@pytest.mark.xfail(
    strict=True,
    reason="tasks.py returns step outputs in the task result, which Flower displays",
)
def test_flower_shows_no_step_outputs(scene):
    for task_id in scene.tasks:
        assert OUTPUT_SECRET not in str(scene.flower.get(f"/api/task/info/{task_id}"))


def test_flower_task_list_in_a_real_browser_shows_the_steps(scene, tmp_path):
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium package for this test")
        pytest.skip("chromium is not installed")
    url = f"{scene.flower.base}/tasks"
    page = {"--window-size": "1800,820", "--virtual-time-budget": "10000"}
    flags = [f"{k}={v}" for k, v in page.items()]
    dom = run_chromium(url, tmp_path / "profile-dom", *flags, "--dump-dom")
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", dom, re.S)
    for run in scene.runs:
        for sid, step in run.steps.items():
            if step.status not in FLOWER_STATE:
                continue
            row = next((r for r in rows if f"{run.id}.{sid}<" in r), None)
            assert row is not None, f"no row for {run.workflow}.{sid} in Flower's task list"
            assert f">{run.workflow}.{sid}<" in row
            assert FLOWER_STATE[step.status] in row
            assert f"run={run.id} step={sid}" in row

    shot = tmp_path / "flower.png"
    run_chromium(url, tmp_path / "profile-shot", *flags, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if target := os.environ.get("RUNBOOK_FLOWER_SCREENSHOT"):
        shutil.copyfile(shot, Path(target))
