"""`validate` rejects malformed values of every failure-handling key with a clear message."""

from __future__ import annotations

import pytest

from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition.loader import load_workflow_text

BASE = "name: x\nsteps:\n  - id: a\n    run: echo\n  - id: s\n    needs: [a]\n    run: echo\n"

CASES = [
    ("    retries: 3\n", "retries", "valid dictionary"),
    ("    retries: {limit: -1}\n", "retries.limit", "greater than or equal to 0"),
    ("    retries: {limit: 2, backoff: 0.5}\n", "retries.backoff", "greater than or equal to 1"),
    ("    retries: {limit: 2, delays: 3}\n", "retries", "unknown key 'delays'"),
    ("    retries: {limit: 1, on_exit_codes: [300]}\n", "on_exit_codes[0]", "less than or equal"),
    ("    timeout: 0\n", "timeout", "greater than 0"),
    ("    timeout: soon\n", "timeout", "valid number"),
    ("    kill_grace: -1\n", "kill_grace", "greater than or equal to 0"),
    ("    continue_on_error: maybe\n", "continue_on_error", "valid boolean"),
    ("    if: failure(\n", "if", "expected ')'"),
    ("    if: nope()\n", "if", "unknown function nope()"),
    ("    if: ${{ steps.zzz.outputs.k == 'x' }}\n", "if", "unknown step 'zzz'"),
    ("    matrix: {py: []}\n", "matrix.py", "at least 1 item"),
    ("    matrix: [a, b]\n", "matrix", "valid dictionary"),
    ("    for_each: not-an-expression\n", "for_each", "for_each must be one expression"),
    ("    for_each: ${{ steps.ghost.outputs.items }}\n", "for_each", "unknown step 'ghost'"),
    ("    max_parallel: 2\n", "max_parallel", "needs 'matrix' or 'for_each'"),
    ("    matrix: {k: [1]}\n    max_parallel: 0\n", "max_parallel", "greater than or equal to 1"),
    ("    queue: 'bad queue!'\n", "queue", "is not a queue name"),
    ("    matrix: {k: [1]}\n    for_each: ${{ steps.a.outputs.x }}\n", "steps[1]", "both"),
    ("    run2: echo\n", "steps[1]", "unknown key 'run2'"),
]


@pytest.mark.parametrize(("extra", "path", "fragment"), CASES)
def test_malformed_control_keys_are_rejected_with_line_and_path(extra, path, fragment):
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(BASE + extra, file="wf.yaml")
    rendered = str(info.value)
    assert rendered.startswith("wf.yaml:"), rendered
    assert path in rendered, rendered
    assert fragment in rendered, rendered
    lines = {p.line for p in info.value.problems}
    assert lines and all(
        line and line >= 5 for line in lines
    )  # the step starts on line 5, rendered


def test_workflow_level_defaults_and_timeout_are_checked():
    bad = "name: x\ndefaults: {timeout: -5}\ntimeout: 0\nsteps:\n  - id: a\n    run: echo\n"
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(bad, file="wf.yaml")
    text = str(info.value)
    assert "wf.yaml:2: defaults.timeout" in text
    assert "wf.yaml:3: timeout" in text


def test_valid_control_keys_load():
    good = BASE + (
        "    retries: {limit: 2, delay: 1, backoff: 2, max_delay: 10, on_exit_codes: [1, 75]}\n"
        "    timeout: 30\n    kill_grace: 2\n    continue_on_error: true\n"
        "    if: failure() || ${{ steps.a.outputs.k == 'x' }}\n"
        "    matrix: {py: ['3.11', '3.12']}\n    max_parallel: 1\n    queue: gpu\n"
    )
    loaded = load_workflow_text(
        good.replace("${{ steps.a.outputs.k == 'x' }}", "steps.a.outputs.k == 'x'")
    )
    assert loaded.workflow.steps[1].retries.limit == 2
