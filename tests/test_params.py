"""Typed params: declared in full or as `name: default`, checked when a run is triggered."""

from __future__ import annotations

import pytest
from conftest import PREFIX, run_cli

from runbook_celery import submit
from runbook_celery.core.errors import InvalidDefinition, InvalidParams
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.definition.model import Param
from runbook_celery.plan.compile import build_snapshot, resolve_params

pytestmark = pytest.mark.timeout(30)

DECLARED = {
    "region": "eu",
    "count": Param(type="number", default=3),
    "dry_run": Param(type="boolean", default=False),
    "env": Param(type="choice", options=["dev", "prod"], default="dev"),
    "tag": Param(required=True, description="image tag"),
    "note": Param(),
}


def test_defaults_apply_where_the_trigger_gives_nothing():
    assert resolve_params(DECLARED, {"tag": "v1"}) == {
        "region": "eu",
        "count": "3",
        "dry_run": "false",
        "env": "dev",
        "tag": "v1",
        "note": "",
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"count": "42"}, "42"),
        ({"count": "-7"}, "-7"),
        ({"count": "2.5"}, "2.5"),
        ({"count": 12}, "12"),
        ({"count": 0.25}, "0.25"),
        ({"dry_run": "true"}, "true"),
        ({"dry_run": True}, "true"),
        ({"env": "prod"}, "prod"),
    ],
)
def test_trigger_values_that_fit_their_type(given, expected):
    key = next(iter(given))
    assert resolve_params(DECLARED, {"tag": "v1", **given})[key] == expected


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"count": "a[$(touch PWNED)]"}, "param 'count' (type: number) must be a decimal number"),
        ({"count": "1e3"}, "must be a decimal number"),
        ({"count": " 3"}, "must be a decimal number"),
        ({"count": "3\n"}, "must be a decimal number"),
        ({"count": "0x10"}, "must be a decimal number"),
        ({"count": True}, "must be a decimal number"),
        ({"count": float("nan")}, "must be a decimal number"),
        ({"count": float("inf")}, "must be a decimal number"),
        ({"dry_run": "yes"}, "param 'dry_run' (type: boolean) must be true or false"),
        ({"env": "staging"}, "param 'env' (type: choice) must be one of dev, prod"),
    ],
)
def test_trigger_values_that_do_not_fit_are_refused(given, fragment):
    with pytest.raises(InvalidParams) as info:
        resolve_params(DECLARED, {"tag": "v1", **given})
    assert fragment in str(info.value)


def test_a_required_param_must_be_given_and_every_problem_is_reported():
    with pytest.raises(InvalidParams) as info:
        resolve_params(DECLARED, {"count": "x", "nope": 1})
    message = str(info.value)
    assert "unknown param 'nope'" in message
    assert "param 'tag' is required: give it (-p tag=VALUE)" in message
    assert "param 'count' (type: number)" in message


WORKFLOW = """\
name: typed
params:
  count:
    type: number
    default: 2
    description: how many
  region: eu
steps:
  - id: s
    run: |
      for (( i = 0; i < ${{ params.count }}; i++ )); do echo "$i"; done
      echo $(( ${{ params.count }} * 2 )) ${{ params.region }}
"""


def test_a_number_param_may_be_used_in_arithmetic():
    loaded = load_workflow_text(WORKFLOW, file="typed.yaml")
    step = build_snapshot(loaded, {"count": "5"})["steps"][0]
    assert step["command"] == (
        'for (( i = 0; i < ${RUNBOOK_PARAM_count}; i++ )); do echo "$i"; done\n'
        'echo $(( ${RUNBOOK_PARAM_count} * 2 )) "${RUNBOOK_PARAM_region}"\n'
    )


def test_a_string_param_may_not_be_used_in_arithmetic():
    text = WORKFLOW.replace("    type: number\n", "")
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="typed.yaml")
    rendered = [p.render() for p in info.value.problems]
    assert rendered[0].startswith("typed.yaml:10: steps[0].run: ${{ params.count }}: ")
    assert "declare the param with type: number" in rendered[0]
    assert len(rendered) == 2


def test_a_matrix_key_of_numbers_may_be_used_in_arithmetic():
    text = (
        "name: m\nsteps:\n  - id: s\n    matrix: {n: [1, 2, 30], word: ['1', x]}\n"
        "    run: echo $(( ${{ matrix.n }} + 1 ))\n"
    )
    load_workflow_text(text)
    with pytest.raises(InvalidDefinition, match="arithmetic"):
        load_workflow_text(text.replace("matrix.n", "matrix.word"))


@pytest.mark.parametrize(
    ("declaration", "line", "fragment"),
    [
        ("{type: choice}", 3, "a choice param needs options: [...]"),
        ("{type: number}", 3, "a number param needs a default or required: true"),
        ("{type: string, options: [a]}", 3, "options belong to type: choice"),
        ("{required: true, default: x}", 3, "a required param has no default"),
        ("{type: number, default: abc}", 3, "default must be a decimal number"),
        ("{type: number, default: true}", 3, "default must be a decimal number"),
        ("{type: boolean, default: 'yes'}", 3, "default must be true or false"),
        ("{type: choice, options: [a, b], default: c}", 3, "default must be one of a, b"),
        ("{type: text}", 3, "'string', 'number', 'boolean' or 'choice'"),
        ("{typ: number}", 3, "unknown key 'typ' (did you mean 'type'?)"),
        ("[1, 2]", 3, "must be a default value (string, number or boolean) or a mapping"),
        ("", 3, "must be a default value"),
    ],
)
def test_bad_declarations_are_definition_errors_at_their_line(declaration, line, fragment):
    text = f"name: t\nparams:\n  p: {declaration}\nsteps:\n  - id: a\n    run: echo\n"
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="wf.yaml")
    rendered = [p.render() for p in info.value.problems]
    assert any(r.startswith(f"wf.yaml:{line}: params.p") and fragment in r for r in rendered), (
        rendered
    )


def test_the_shorthand_and_the_full_form_mean_the_same():
    short = load_workflow_text("name: t\nparams:\n  p: 3\nsteps:\n  - id: a\n    run: echo\n")
    full = load_workflow_text(
        "name: t\nparams:\n  p: {default: 3}\nsteps:\n  - id: a\n    run: echo\n"
    )
    assert short.workflow.params == full.workflow.params
    assert short.workflow.params["p"] == Param(default=3, type="string")


def test_trigger_refuses_a_value_that_does_not_fit_with_exit_2(write_workflow, redis_client):
    wf = write_workflow(WORKFLOW)
    runs_before = redis_client.zcard(f"{PREFIX}:runs")
    res = run_cli("trigger", str(wf), "-p", "count=a[$(touch PWNED)]")
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (
        "error: param 'count' (type: number) must be a decimal number such as 3, -1 or 2.5 "
        "(got 'a[$(touch PWNED)]')\n"
    )
    assert redis_client.zcard(f"{PREFIX}:runs") == runs_before


def test_submit_refuses_a_missing_required_param(write_workflow, redis_client):
    wf = write_workflow(WORKFLOW.replace("  region: eu\n", "  region: {required: true}\n"))
    runs_before = redis_client.zcard(f"{PREFIX}:runs")
    with pytest.raises(InvalidParams, match="param 'region' is required"):
        submit(wf, {"count": 1})
    assert redis_client.zcard(f"{PREFIX}:runs") == runs_before


def test_a_scheduled_workflow_may_not_require_a_param():
    text = (
        "name: t\nschedule: '@hourly'\nparams:\n  p: {required: true}\n"
        "steps:\n  - id: a\n    run: echo\n"
    )
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="wf.yaml")
    assert [p.render() for p in info.value.problems] == [
        "wf.yaml:4: params.p: beat triggers a scheduled workflow without params: give it a default"
    ]
