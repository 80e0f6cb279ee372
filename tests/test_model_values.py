"""Values a definition may hold: numbers are numbers (not booleans, not NaN), text has no NUL.

Files are covered line by line by the invalid-definition corpus; these tests hold the
models themselves to it, as Python code that builds a Workflow meets them.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from runbook_celery.client.api import submit
from runbook_celery.core.errors import InvalidParams
from runbook_celery.definition.loader import from_model
from runbook_celery.definition.model import Workflow

pytestmark = pytest.mark.timeout(30)

STEP = {"id": "a", "run": "echo"}


def errors(**workflow: object) -> list[tuple[tuple[object, ...], str]]:
    with pytest.raises(ValidationError) as info:
        Workflow.model_validate({"name": "x", "steps": [STEP], **workflow})
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("step_keys", "loc"),
    [
        ({"timeout": True}, ("steps", 0, "timeout")),
        ({"kill_grace": False}, ("steps", 0, "kill_grace")),
        ({"priority": True}, ("steps", 0, "priority")),
        ({"max_parallel": True, "matrix": {"a": [1]}}, ("steps", 0, "max_parallel")),
        ({"retries": {"limit": True}}, ("steps", 0, "retries", "limit")),
        ({"retries": {"limit": 1, "delay": True}}, ("steps", 0, "retries", "delay")),
        ({"retries": {"limit": 1, "backoff": True}}, ("steps", 0, "retries", "backoff")),
        ({"retries": {"limit": 1, "max_delay": True}}, ("steps", 0, "retries", "max_delay")),
        (
            {"retries": {"limit": 1, "on_exit_codes": [True]}},
            ("steps", 0, "retries", "on_exit_codes"),
        ),
        ({"approval": {"timeout": True}}, ("steps", 0, "approval", "timeout")),
    ],
)
def test_a_boolean_is_not_a_number_in_any_numeric_step_key(step_keys, loc):
    written = "false" if "kill_grace" in step_keys else "true"
    found = errors(steps=[{**STEP, **step_keys}])
    assert (loc, f"must be a number, not {written} (booleans are not numbers here)") in found


@pytest.mark.parametrize(
    ("keys", "loc"),
    [
        ({"timeout": True}, ("timeout",)),
        ({"priority": True}, ("priority",)),
        ({"max_active_steps": True}, ("max_active_steps",)),
        ({"concurrency": {"group": "g", "limit": True}}, ("concurrency", "limit")),
        ({"defaults": {"timeout": True}}, ("defaults", "timeout")),
        ({"defaults": {"retries": {"limit": True}}}, ("defaults", "retries", "limit")),
    ],
)
def test_a_boolean_is_not_a_number_in_any_numeric_workflow_key(keys, loc):
    assert [lc for lc, _ in errors(**keys)] == [loc]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity"])
@pytest.mark.parametrize("key", ["timeout", "kill_grace"])
def test_nan_and_infinity_are_refused_by_name(key, value):
    ((loc, msg),) = errors(steps=[{**STEP, key: value}])
    assert loc == ("steps", 0, key)
    assert msg.startswith("must be a finite number, not ")


def test_numbers_written_as_numbers_or_digits_still_work():
    wf = Workflow.model_validate(
        {"name": "x", "timeout": "60", "steps": [{**STEP, "timeout": 1.5, "retries": {"limit": 0}}]}
    )
    assert (wf.timeout, wf.steps[0].timeout, wf.steps[0].retries.limit) == (60.0, 1.5, 0)  # type: ignore[union-attr]


def test_booleans_stay_welcome_where_they_are_values():
    wf = Workflow.model_validate(
        {"name": "x", "params": {"dry": True}, "env": {"V": False}, "steps": [STEP]}
    )
    assert (wf.params["dry"].default, wf.env["V"]) == (True, "false")


@pytest.mark.parametrize(
    ("workflow", "loc"),
    [
        ({"params": {"p": math.nan}}, ("params", "p", "default")),
        ({"env": {"V": math.inf}}, ("env", "V")),
        ({"steps": [{**STEP, "matrix": {"m": [1, math.nan]}}]}, ("steps", 0, "matrix", "m", 1)),
    ],
)
def test_nan_as_a_value_is_refused_with_a_hint_to_quote_it(workflow, loc):
    found = errors(**workflow)
    assert len(found) == 1
    assert found[0][0] == loc
    assert "must be a finite number" in found[0][1] and "quote it" in found[0][1]


@pytest.mark.parametrize(
    ("workflow", "loc", "inside"),
    [
        ({"description": "d\x00"}, ("description",), ""),
        ({"env": {"V": "a\x00"}}, ("env",), "V: "),
        ({"params": {"p": "a\x00"}}, ("params", "p", "default"), ""),
        ({"steps": [{**STEP, "run": "echo \x00"}]}, ("steps", 0, "run"), ""),
        ({"steps": [{**STEP, "name": "n\x00"}]}, ("steps", 0, "name"), ""),
        ({"steps": [{**STEP, "env": {"V": "a\x00"}}]}, ("steps", 0, "env"), "V: "),
        (
            {"steps": [{**STEP, "matrix": {"m": ["ok", "x\x00"]}}]},
            ("steps", 0, "matrix"),
            "m[1]: ",
        ),
        ({"steps": [{**STEP, "working_dir": "d\x00"}]}, ("steps", 0, "working_dir"), ""),
        ({"steps": [{**STEP, "if": "always()\x00"}]}, ("steps", 0, "if"), ""),
        (
            {"steps": [{**STEP, "approval": {"prompt": "ok?\x00"}}]},
            ("steps", 0, "approval", "prompt"),
            "",
        ),
    ],
)
def test_no_text_of_a_definition_built_in_python_may_hold_nul(workflow, loc, inside):
    found = errors(**workflow)
    assert (
        loc,
        f"{inside}contains a NUL character (\\0), which Bash cannot take in a command, "
        "an argument or an environment variable; remove it",
    ) in found


def test_a_trigger_param_with_nul_is_invalid_input():
    loaded = from_model(
        Workflow.model_validate({"name": "x", "params": {"p": "d"}, "steps": [STEP]})
    )
    with pytest.raises(InvalidParams) as info:
        submit(loaded, {"p": "a\x00b"})
    assert info.value.exit_code == 2
    assert "contains a NUL byte" in str(info.value)
