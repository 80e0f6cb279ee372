"""Workflows with ``if:``, ``matrix`` and ``for_each`` run as one Celery canvas, and record
exactly what the same snapshot records under dynamic dispatch (real worker, real Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from conftest import wait_for_event

from runbook_celery.client.api import submit_snapshot
from runbook_celery.definition.loader import load_workflow
from runbook_celery.engine.app import app
from runbook_celery.plan.compile import CANVAS, DYNAMIC, build_snapshot

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def _run_both(path: Path, params: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The workflow as compiled (expected canvas), and the same snapshot forced dynamic."""
    snapshot = build_snapshot(load_workflow(path), params)
    assert snapshot["mode"] == CANVAS, snapshot["mode_reason"]
    canvas = submit_snapshot(dict(snapshot))
    dynamic = submit_snapshot({**snapshot, "mode": DYNAMIC, "mode_reason": "forced by the test"})
    canvas.wait(timeout=90)
    dynamic.wait(timeout=90)
    return canvas, dynamic


def _records(run: Any) -> dict[str, tuple[Any, ...]]:
    final = run.status()
    return {
        sid: (str(s.status), str(s.reason or ""), s.outputs, s.exit_code, s.values)
        for sid, s in final.steps.items()
    }


def _step_events(run: Any) -> list[tuple[str, str]]:
    """Each step's recorded transitions, in the order of the step (not of the run)."""
    per_step: dict[str, list[str]] = {}
    for event in run.events():
        if event.step:
            per_step.setdefault(event.step, []).append(event.type)
    return sorted((step, ",".join(types)) for step, types in per_step.items())


def _task_results(run: Any, steps: list[str]) -> dict[str, tuple[str, Any]]:
    """What Celery's result backend holds for each step's task: state and status/outputs."""
    out = {}
    for step in steps:
        res = AsyncResult(f"{run.id}.{step}", app=app)
        value = res.get(timeout=30, propagate=False)
        out[step] = (res.state, value.get("status"), value.get("outputs"))
    return out


IF_WORKFLOW = """
name: canvas-if
params:
  target: {default: staging}
steps:
  - id: build
    run: echo "kind=lib" >> "$RUNBOOK_OUTPUT"
  - id: deploy-prod
    needs: [build]
    if: params.target == 'prod'
    run: echo "where=prod" >> "$RUNBOOK_OUTPUT"
  - id: after-prod
    needs: [deploy-prod]
    run: echo "ran=yes" >> "$RUNBOOK_OUTPUT"
  - id: docs
    needs: [build]
    if: ${{ steps.build.outputs.kind == 'lib' && success() }}
    run: echo "docs=${{ steps.build.outputs.kind }}" >> "$RUNBOOK_OUTPUT"
  - id: report
    needs: [docs]
    run: echo "saw=${{ steps.docs.outputs.docs }}" >> "$RUNBOOK_OUTPUT"
"""


def test_a_false_if_is_skipped_inside_the_canvas_exactly_as_dynamic_dispatch_skips_it(
    write_workflow,
):
    # Given a series-parallel workflow whose if: conditions read a param and an output
    wf = write_workflow(IF_WORKFLOW)

    # When it runs as compiled (a canvas) and, from the same snapshot, by dynamic dispatch
    canvas, dynamic = _run_both(wf)

    # Then the canvas run skipped the false step and what needs it, and went on
    final = canvas.status()
    assert final.mode == CANVAS and dynamic.status().mode == DYNAMIC
    assert final.status == "succeeded", final.to_dict()
    steps = final.steps
    assert steps["deploy-prod"].status == "skipped"
    assert steps["deploy-prod"].reason == "condition false: params.target == 'prod'"
    assert steps["after-prod"].status == "skipped"
    assert steps["after-prod"].reason == "needs deploy-prod skipped"
    assert steps["docs"].outputs == {"docs": "lib"}
    assert steps["report"].outputs == {"saw": "lib"}
    # And it recorded, announced and stored exactly what dynamic dispatch did
    assert _records(canvas) == _records(dynamic)
    assert _step_events(canvas) == _step_events(dynamic)
    names = list(steps)
    assert _task_results(canvas, names) == _task_results(dynamic, names)


def test_a_true_if_runs_the_step_in_the_canvas(write_workflow):
    wf = write_workflow(IF_WORKFLOW)
    canvas, dynamic = _run_both(wf, {"target": "prod"})
    final = canvas.status()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["deploy-prod"].outputs == {"where": "prod"}
    assert final.steps["after-prod"].outputs == {"ran": "yes"}
    assert _records(canvas) == _records(dynamic)


FAN_WORKFLOW = """
name: canvas-fan
steps:
  - id: list
    run: echo 'items=["a", "b", "c"]' >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [list]
    for_each: ${{ steps.list.outputs.items }}
    max_parallel: 2
    run: |
      [ "${{ item }}" != "{fail}" ] || exit 4
      echo "got=${{ item }}" >> "$RUNBOOK_OUTPUT"
  - id: test
    needs: [list]
    matrix: {py: ["3.11", "3.12"], os: [linux]}
    run: echo "v=${{ matrix.py }}-${{ matrix.os }}" >> "$RUNBOOK_OUTPUT"
  - id: merge
    needs: [each, test]
    run: echo "all=${{ steps.each.outputs.got }}|${{ steps.test.outputs.v }}" >> "$RUNBOOK_OUTPUT"
  - id: fan-again
    needs: [merge]
    matrix: {n: [1, 2]}
    run: echo "n=${{ matrix.n }}" >> "$RUNBOOK_OUTPUT"
  - id: last
    needs: [fan-again]
    run: echo "ns=${{ steps.fan-again.outputs.n }}" >> "$RUNBOOK_OUTPUT"
"""


def test_matrix_and_for_each_run_inside_the_canvas_and_it_goes_on_after_their_join(
    write_workflow,
):
    # Given fan-outs in a chord header (each, test) and in a chain (fan-again)
    wf = write_workflow(FAN_WORKFLOW.replace("{fail}", "none"))

    # When it runs as compiled (a canvas) and, from the same snapshot, by dynamic dispatch
    canvas, dynamic = _run_both(wf)

    # Then every instance ran, each join carried the canvas on, and what follows saw them
    final = canvas.status()
    assert final.mode == CANVAS
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["each"].outputs == [{"got": "a"}, {"got": "b"}, {"got": "c"}]
    assert final.steps["merge"].outputs == {"all": '["a","b","c"]|["3.11-linux","3.12-linux"]'}
    assert final.steps["last"].outputs == {"ns": '["1","2"]'}
    # And it recorded and stored exactly what dynamic dispatch did
    assert _records(canvas) == _records(dynamic)
    assert _step_events(canvas) == _step_events(dynamic)
    assert _task_results(canvas, list(final.steps)) == _task_results(dynamic, list(final.steps))
    # And the join's task holds the fanned-out step's outputs in the result backend
    join = AsyncResult(f"{canvas.id}.each.join", app=app).get(timeout=30)
    assert join["status"] == "succeeded"
    assert join["outputs"] == [{"got": "a"}, {"got": "b"}, {"got": "c"}]


def test_a_failed_instance_stops_the_canvas_at_its_join_as_dynamic_dispatch_does(
    write_workflow,
):
    wf = write_workflow(FAN_WORKFLOW.replace("{fail}", "b"))
    canvas, dynamic = _run_both(wf)
    final = canvas.status()
    assert final.status == "failed", final.to_dict()
    assert final.steps["each[1]"].status == "failed"
    assert final.steps["each"].status == "failed"
    assert final.steps["each"].reason == "instance_failed"
    assert final.steps["test"].status == "succeeded"
    assert final.steps["merge"].status == "skipped"
    assert final.steps["last"].status == "skipped"
    # And it recorded what dynamic dispatch did, but for one known difference of every
    # canvas run (not of fan-outs): a canvas records all the steps below a failure skipped
    # in the failure's transition, each "needs <the failed step> failed", where dynamic
    # dispatch skips them one by one, each naming its own need
    ours, theirs = _records(canvas), _records(dynamic)
    assert theirs["fan-again"][1] == "needs merge skipped"
    assert theirs["last"][1] == "needs fan-again skipped"
    for sid in ("fan-again", "last"):
        assert ours[sid][1] == "needs each failed"
        ours[sid] = theirs[sid]
    assert ours == theirs
    join = AsyncResult(f"{canvas.id}.each.join", app=app)
    join.get(timeout=30, propagate=False)
    assert join.state == "FAILURE"


def _long_chain(n: int, fail_at: int | None = None) -> str:
    lines = ["name: long-chain", "steps:", "  - id: s0", '    run: echo "n=x" >> "$RUNBOOK_OUTPUT"']
    for i in range(1, n):
        run = f'echo "n=${{{{ steps.s{i - 1}.outputs.n }}}}x" >> "$RUNBOOK_OUTPUT"'
        if i == fail_at:
            run = "exit 3"
        lines += [f"  - id: s{i}", f"    needs: [s{i - 1}]", f"    run: '{run}'"]
    return "\n".join(lines) + "\n"


def test_a_long_chain_runs_segment_after_segment_passing_outputs_across_them(write_workflow):
    # Given a linear workflow longer than two segments (canvassegments)
    wf = write_workflow(_long_chain(80))
    canvas, dynamic = _run_both(wf)
    final = canvas.status()
    # Then every segment was sent by the step before it, and outputs crossed the cuts
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["s79"].outputs == {"n": "x" * 80}
    assert _records(canvas) == _records(dynamic)


def test_a_failure_in_a_later_segment_stops_the_chain_there(write_workflow):
    wf = write_workflow(_long_chain(80, fail_at=50))
    canvas, _dynamic = _run_both(wf)
    final = canvas.status()
    assert final.status == "failed"
    assert final.steps["s49"].outputs == {"n": "x" * 50}
    assert final.steps["s50"].status == "failed"
    assert {final.steps[f"s{i}"].status for i in range(51, 80)} == {"skipped"}
    # no later segment was sent: none of its steps ever had a task
    assert AsyncResult(f"{canvas.id}.s64", app=app).state == "PENDING"


CLEANUP_WORKFLOW = """
name: canvas-cleanup
steps:
  - id: build
    run: echo "v=1" >> "$RUNBOOK_OUTPUT"
  - id: test
    needs: [build]
    run: exit {code}
  - id: lint
    needs: [build]
    run: echo "lint=ok" >> "$RUNBOOK_OUTPUT"
  - id: deploy
    needs: [test, lint]
    run: echo "deployed=yes" >> "$RUNBOOK_OUTPUT"
  - id: rollback
    needs: [deploy]
    if: failure()
    run: echo "rolled=back" >> "$RUNBOOK_OUTPUT"
  - id: notify
    needs: [rollback]
    if: always()
    run: echo "saw=${{ steps.rollback.outputs.rolled }}" >> "$RUNBOOK_OUTPUT"
"""


@pytest.mark.parametrize("code", [0, 3])
def test_failure_handlers_run_as_in_dynamic_dispatch_after_a_canvas_hands_over(
    write_workflow, code
):
    # Given a canvas with a failure() rollback and an always() notification
    text = CLEANUP_WORKFLOW.replace("{code}", str(code))
    wf = write_workflow(text, name=f"cleanup{code}.yaml")

    # When it runs as compiled and, from the same snapshot, by dynamic dispatch
    canvas, dynamic = _run_both(wf)

    # Then it ran as a canvas until the failure (if any), and recorded exactly what dynamic
    # dispatch recorded: the rollback ran only after a failure, the notification always
    final = canvas.status()
    assert final.status == ("succeeded" if code == 0 else "failed"), final.to_dict()
    assert final.mode == (CANVAS if code == 0 else DYNAMIC)  # handed over at the failure
    assert final.steps["rollback"].status == ("skipped" if code == 0 else "succeeded")
    assert final.steps["notify"].outputs == {"saw": "" if code == 0 else "back"}
    assert _records(canvas) == _records(dynamic)
    assert _step_events(canvas) == _step_events(dynamic)


def test_a_cancelled_canvas_still_runs_its_always_cleanup_as_dynamic_dispatch_does(
    write_workflow, store
):
    # Given a canvas whose cleanup step runs always(), cancelled while its first step runs
    wf = write_workflow("""
name: canvas-cancel
steps:
  - id: work
    run: sleep 600
  - id: after
    needs: [work]
    run: echo "ran=yes" >> "$RUNBOOK_OUTPUT"
  - id: cleanup
    needs: [after]
    if: always()
    run: echo "cleaned=yes" >> "$RUNBOOK_OUTPUT"
""")
    snapshot = build_snapshot(load_workflow(wf))
    assert snapshot["mode"] == CANVAS
    records = []
    for mode in (CANVAS, DYNAMIC):
        run = submit_snapshot({**snapshot, "mode": mode})
        wait_for_event(store, run.id, "step_started", "work")
        run.cancel()
        final = run.wait(timeout=60)
        # Then the run is cancelled and the cleanup ran, in both modes
        assert final.status == "cancelled", final.to_dict()
        assert final.steps["work"].status == "cancelled"
        assert final.steps["cleanup"].outputs == {"cleaned": "yes"}
        records.append(_records(run))
    assert records[0] == records[1]
