"""Dependency results and value functions end to end (GitHub Actions semantics): a real
worker, real Redis, real Bash."""

from __future__ import annotations

import json

import pytest

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_an_alls_green_step_decides_from_tojson_of_its_needs(write_workflow):
    # Given two jobs, one allowed to fail, and an "alls-green" check over toJSON(needs)
    # (as re-actions/alls-green is used by pydantic's and celery's CI)
    wf = write_workflow("""
name: alls-green
steps:
  - id: lint
    run: echo "tool=ruff" >> "$RUNBOOK_OUTPUT"
  - id: docs
    continue_on_error: true
    run: exit 3
  - id: check
    needs: [lint, docs]
    if: always()
    env:
      JOBS: ${{ toJSON(needs) }}
    run: |
      echo "jobs=$(printf '%s' "$JOBS" | tr -d ' \\n')" >> "$RUNBOOK_OUTPUT"
      echo "any_failed=${{ contains(toJSON(needs), '"failed"') }}" >> "$RUNBOOK_OUTPUT"
      echo "docs=${{ steps.docs.status }}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    out = final.steps["check"].outputs
    assert json.loads(out["jobs"]) == {
        "lint": {"result": "succeeded", "outputs": {"tool": "ruff"}},
        "docs": {"result": "failed", "outputs": {}},
    }
    assert out["any_failed"] == "true"
    assert out["docs"] == "failed"


def test_a_condition_on_a_needs_status_runs_without_implying_success(write_workflow):
    # Given build fails; on_build_failure asks for exactly that, without failure()
    wf = write_workflow("""
name: on-status
steps:
  - id: build
    run: exit 1
  - id: on_build_failure
    needs: [build]
    if: ${{ steps.build.status == 'failed' }}
    run: echo "saw=${{ steps.build.status }}" >> "$RUNBOOK_OUTPUT"
  - id: on_build_success
    needs: [build]
    if: steps.build.status == 'succeeded'
    run: echo never
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["on_build_failure"].status == "succeeded", final.to_dict()
    assert final.steps["on_build_failure"].outputs == {"saw": "failed"}
    assert final.steps["on_build_success"].status == "skipped"


def test_a_cleanup_step_reads_run_status_and_gets_it_in_its_environment(write_workflow):
    wf = write_workflow("""
name: cleanup-status
steps:
  - id: work
    run: exit 2
  - id: cleanup
    needs: [work]
    if: always()
    run: |
      echo "expr=${{ run.status }}" >> "$RUNBOOK_OUTPUT"
      echo "env=$RUNBOOK_RUN_STATUS" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["cleanup"].outputs == {"expr": "failed", "env": "failed"}


def test_run_status_is_succeeded_while_nothing_failed(write_workflow):
    wf = write_workflow("""
name: ok-status
steps:
  - id: a
    run: "true"
  - id: b
    needs: [a]
    run: echo "s=$RUNBOOK_RUN_STATUS ${{ run.status }}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.steps["b"].outputs == {"s": "succeeded succeeded"}, final.to_dict()


def test_functions_in_run_env_and_for_each(write_workflow):
    wf = write_workflow("""
name: functions
params:
  targets: '["eu-west", "us-east"]'
  tag: Release-1.2
steps:
  - id: fan
    for_each: ${{ fromJSON(params.targets) }}
    run: echo "r=${{ format('{0}@{1}', item, params.tag) }}" >> "$RUNBOOK_OUTPUT"
  - id: decide
    needs: [fan]
    env:
      IS_RELEASE: ${{ startsWith(params.tag, 'release') }}
    run: |
      echo "release=$IS_RELEASE" >> "$RUNBOOK_OUTPUT"
      echo "joined=${{ join(fromJSON(params.targets), '+') }}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["decide"].outputs == {"release": "true", "joined": "eu-west+us-east"}
    instances = sorted(s.outputs["r"] for sid, s in final.steps.items() if sid.startswith("fan["))
    assert instances == ["eu-west@Release-1.2", "us-east@Release-1.2"]


def test_fromjson_of_text_that_is_not_json_fails_the_step_as_bad_input(write_workflow):
    wf = write_workflow("""
name: bad-json
params:
  cfg: not json
steps:
  - id: a
    env:
      REGION: ${{ fromJSON(params.cfg).region }}
    run: echo "$REGION"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    step = final.steps["a"]
    assert step.reason == "bad_input", final.to_dict()


def test_workflow_outputs_are_the_runs_result_in_status_and_to_dict(write_workflow):
    from conftest import run_cli

    wf = write_workflow("""
name: with-outputs
outputs:
  version: v${{ steps.build.outputs.version }}
  tested: ${{ steps.test.status }}
  summary: ${{ format('{0} on {1}', run.status, params.target) }}
params:
  target: staging
steps:
  - id: build
    run: echo "version=1.4.2" >> "$RUNBOOK_OUTPUT"
  - id: test
    needs: [build]
    run: "true"
""")
    run = submit(wf)
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    expected = {"version": "v1.4.2", "tested": "succeeded", "summary": "succeeded on staging"}
    assert final.outputs == expected
    assert final.to_dict()["outputs"] == expected
    shown = run_cli("status", run.id)
    assert "output    version=v1.4.2" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.parametrize(
    ("ref", "released"), [("refs/heads/main", "skipped"), ("refs/tags/v2.12.0", "succeeded")]
)
def test_the_pydantic_ci_example_runs_its_matrix_check_and_tag_only_release(ref, released):
    from pathlib import Path

    wf = Path(__file__).resolve().parent.parent / "definitions" / "pydantic-ci.yaml"
    final = submit(wf, {"ref": ref}).wait(timeout=120)
    assert final.status == "succeeded", final.to_dict()
    tests = [s for sid, s in final.steps.items() if sid.startswith("test[")]
    assert len(tests) == 8  # 5 Linux versions + 3 included (macOS, Windows)
    assert final.outputs == {"version": "2.12.0", "verdict": "all green"}
    assert final.steps["release"].status == released
