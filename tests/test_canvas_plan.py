"""Which workflows compile to a canvas, and what `plan` says about each part (pure)."""

from __future__ import annotations

import pytest
from conftest import run_cli

from runbook_celery.definition.loader import from_mapping
from runbook_celery.plan.canvasplan import condition_problem
from runbook_celery.plan.compile import CANVAS, DYNAMIC, build_snapshot, make_plan


@pytest.mark.parametrize(
    "condition",
    [
        "params.target == 'prod'",
        "${{ steps.build.outputs.kind == 'lib' }}",
        "success()",
        "${{ success() && steps.a.status == 'succeeded' }}",
        "contains(params.list, 'x') && success()",
    ],
)
def test_conditions_true_only_after_success_are_decided_in_the_canvas(condition):
    assert condition_problem(condition) is None


@pytest.mark.parametrize(
    ("condition", "why"),
    [
        ("failure()", "uses failure()"),
        ("always()", "uses always()"),
        ("${{ cancelled() || params.x == '1' }}", "uses cancelled()"),
        ("success() || failure()", "uses failure()"),
        ("steps.a.status == 'failed'", "reads a step's or the run's status"),
        ("needs.a.result == 'skipped'", "reads a step's or the run's status"),
        ("run.status == 'failed'", "reads a step's or the run's status"),
    ],
)
def test_conditions_that_may_hold_after_a_failure_need_dynamic_dispatch(condition, why):
    problem = condition_problem(condition)
    assert problem is not None and problem.startswith(why)


def test_plan_shows_an_if_step_inside_the_canvas():
    loaded = from_mapping(
        {
            "name": "shapes",
            "params": {"target": "x"},
            "steps": [
                {"id": "a", "run": "true"},
                {"id": "b", "needs": ["a"], "if": "params.target == 'y'", "run": "true"},
            ],
        }
    )
    plan = make_plan(loaded.graph, loaded.workflow)
    assert plan.mode == CANVAS
    assert plan.render() == (
        "canvas (exact mirror of the DAG):\n"
        "  chain(\n"
        "    a,\n"
        "    b  [if: params.target == 'y' (decided by its task; false: skipped)]\n"
        "  )"
    )
    assert build_snapshot(loaded)["mode"] == CANVAS


def test_plan_says_which_steps_hand_a_canvas_run_over_to_dynamic_dispatch():
    loaded = from_mapping(
        {
            "name": "shapes",
            "steps": [
                {"id": "a", "run": "true"},
                {"id": "cleanup", "needs": ["a"], "if": "always()", "run": "true"},
            ],
        }
    )
    plan = make_plan(loaded.graph, loaded.workflow)
    assert plan.mode == CANVAS
    assert plan.render().splitlines()[-4:] == [
        "    cleanup  [if: always() (decided by its task; false: skipped)]",
        "  )",
        "at the first failure or cancel, the run continues by dynamic dispatch from its "
        "record (a canvas stops at a failure), because:",
        "  step 'cleanup' has if: always(), which uses always(): it may run after a failure "
        "or a cancel, which ends a canvas",
    ]
    snapshot = build_snapshot(loaded)
    assert snapshot["mode"] == CANVAS
    assert (
        "at a failure or a cancel the run continues by dynamic dispatch"
        in (snapshot["mode_reason"])
    )


def test_only_a_dag_that_is_not_series_parallel_is_dynamic():
    loaded = from_mapping(
        {
            "name": "n",
            "steps": [
                {"id": "a", "run": "true"},
                {"id": "b", "run": "true"},
                {"id": "c", "needs": ["a"], "if": "params.x == 'y'", "run": "true"},
                {"id": "d", "needs": ["a", "b"], "matrix": {"k": [1, 2]}, "run": "true"},
            ],
            "params": {"x": "z"},
        }
    )
    plan = make_plan(loaded.graph, loaded.workflow)
    assert plan.mode == DYNAMIC
    lines = plan.render().splitlines()
    assert lines[0] == "dynamic dispatch (the DAG is not series-parallel, so no canvas mirrors it)"
    assert lines[-1] == "    d after a, b  [matrix: 2 instances, joined before what follows]"


def test_the_plan_command_prints_the_canvas_with_its_conditions(write_workflow):
    wf = write_workflow("""
name: cli-plan
params: {target: {default: x}}
steps:
  - {id: a, run: "true"}
  - {id: b, needs: [a], if: "params.target == 'y'", run: "true"}
""")
    result = run_cli("plan", str(wf))
    assert result.returncode == 0, result.stderr
    assert "canvas (exact mirror of the DAG)" in result.stdout
    assert "b  [if: params.target == 'y' (decided by its task; false: skipped)]" in result.stdout
