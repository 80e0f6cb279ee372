"""`validate` rejects malformed operator-control keys with a clear message and line."""

from __future__ import annotations

import pytest

from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition.loader import load_workflow_text

STEP = "name: x\n{top}steps:\n  - id: s\n    run: echo\n{step}"

CASES = [
    ("", "    approval: yes\n", "approval", "valid dictionary"),
    ("", "    approval: {prompt: go, timeout: 0}\n", "approval.timeout", "greater than 0"),
    ("", "    approval: {prompt: go, ask: x}\n", "approval", "unknown key 'ask'"),
    ("", "    on_failure: stop\n", "on_failure", "'fail' or 'pause'"),
    ("", "    priority: 10\n", "priority", "less than or equal to 9"),
    ("concurrency: {limit: 1}\n", "", "concurrency", "missing required key 'group'"),
    ("concurrency: {group: g, limit: 0}\n", "", "concurrency.limit", "greater than or equal"),
    (
        "concurrency: {group: g, on_conflict: wait}\n",
        "",
        "concurrency.on_conflict",
        "'queue', 'cancel_running' or 'skip'",
    ),
    (
        "concurrency: {group: 'g-${{ params.nope }}'}\n",
        "",
        "concurrency.group",
        "unknown param 'nope'",
    ),
    (
        "concurrency: {group: 'g-${{ steps.s.outputs.k }}'}\n",
        "",
        "concurrency.group",
        "params only",
    ),
    ("max_active_steps: 0\n", "", "max_active_steps", "greater than or equal to 1"),
    ("defaults: {on_failure: later}\n", "", "defaults.on_failure", "'fail' or 'pause'"),
]


@pytest.mark.parametrize(("top", "step", "path", "fragment"), CASES)
def test_malformed_operator_keys_are_rejected(top, step, path, fragment):
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(STEP.format(top=top, step=step), file="wf.yaml")
    text = str(info.value)
    assert text.startswith("wf.yaml:") and path in text and fragment in text, text
    assert all(p.line for p in info.value.problems), text


def test_valid_operator_keys_load():
    text = STEP.format(
        top="concurrency: {group: 'deploy-${{ params.env }}', limit: 2, on_conflict: skip}\n"
        "max_active_steps: 3\npriority: 7\nparams: {env: prod}\n",
        step="    approval: {prompt: ok?, timeout: 60}\n    on_failure: pause\n    priority: 1\n",
    )
    wf = load_workflow_text(text).workflow
    assert wf.concurrency.limit == 2 and wf.steps[0].approval.timeout == 60
