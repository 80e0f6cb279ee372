"""The typed run snapshot (``plan/snapshot.py``): what a worker reads of a stored snapshot.

The stored form is the one ``build_snapshot`` writes (runs in flight keep working); the
typed form is parsed from it once, checked for its version first, and cannot be changed.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from runbook_celery.core.errors import UnsupportedSnapshot
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.plan.compile import build_snapshot
from runbook_celery.plan.snapshot import ApprovalGate, RetryPolicy, RunSnapshot, StepSpec
from runbook_celery.plan.snapshotversion import SNAPSHOT_VERSION

pytestmark = pytest.mark.timeout(30)

WORKFLOW = """\
name: typed
params:
  n: {default: 2, type: number}
env:
  STAGE: ci
secrets: [TOKEN]
max_active_steps: 3
defaults:
  timeout: 600
steps:
  - id: build
    run: make -j "${{ params.n }}"
    retries: {limit: 2, delay: 1, backoff: 2, max_delay: 3, on_exit_codes: [1]}
    continue_on_error: [7, 8]
    skip_on_exit_codes: [99]
    output: VERSION
    kill_grace: 5
  - id: ship
    needs: [build]
    if: success() && steps.build.status == 'succeeded'
    approval: {prompt: Ship it?, timeout: 60}
    on_failure: pause
    shell: sh
    run: echo shipping
  - id: each
    needs: [build]
    matrix: {os: [linux, mac]}
    max_parallel: 1
    run: echo "${{ matrix.os }}"
"""


@pytest.fixture
def stored() -> dict:  # type: ignore[type-arg]
    """A snapshot as the store holds it: written by build_snapshot, through JSON."""
    return json.loads(json.dumps(build_snapshot(load_workflow_text(WORKFLOW), {})))


def test_the_run_is_read_with_its_types(stored: dict) -> None:  # type: ignore[type-arg]
    snap = RunSnapshot.parse("r1", stored)
    assert (snap.version, snap.workflow) == (SNAPSHOT_VERSION, "typed")
    assert snap.mode == stored["mode"] == "canvas"
    assert dict(snap.params) == {"n": "2"} and dict(snap.env) == {"STAGE": "ci"}
    assert snap.secrets == ("TOKEN",) and snap.max_active_steps == 3
    assert list(snap.steps) == ["build", "ship", "each"]  # the workflow's order
    assert snap.raw is stored  # the wire form, passed on as it is


def test_each_step_is_read_with_its_types_and_the_workflows_defaults(stored: dict) -> None:  # type: ignore[type-arg]
    steps = RunSnapshot.parse("r1", stored).steps
    build, ship, each = steps["build"], steps["ship"], steps["each"]
    assert build.retries == RetryPolicy(
        limit=2, delay=1, backoff=2, max_delay=3, on_exit_codes=(1,)
    )
    assert build.continue_on_error == (7, 8) and build.skip_on_exit_codes == (99,)
    assert (build.output, build.kill_grace, build.timeout) == ("VERSION", 5, 600)
    assert list(build.vars.values()) == ["params.n"] and "${" in build.command
    assert ship.needs == ("build",) and ship.condition is not None
    assert ship.approval == ApprovalGate(prompt="Ship it?", timeout=60)
    assert ship.on_failure == "pause" and ship.shell_script == "echo shipping"
    assert not ship.fans_out and ship.continue_on_error is False
    assert each.fans_out and dict(each.matrix or {}) == {"os": ["linux", "mac"]}
    assert each.max_parallel == 1


def test_the_retry_delay_backs_off_up_to_its_cap() -> None:
    policy = RetryPolicy(limit=5, delay=2, backoff=3, max_delay=10)
    assert [policy.delay_before(n) for n in (1, 2, 3)] == [2, 6, 10]


def test_every_step_key_build_snapshot_writes_is_read_or_only_passed_on(stored: dict) -> None:  # type: ignore[type-arg]
    """A key added to the builder is either read by the worker (a StepSpec field) or is
    only for what passes the wire form on (dispatch: name, queue, priority)."""
    fields = {f.name for f in dataclasses.fields(StepSpec)}
    wire_names = {"if": "condition", "with": "with_"}
    passed_on = {"name", "queue", "priority"}
    written = {key for step in stored["steps"] for key in step}
    unread = {k for k in written if wire_names.get(k, k) not in fields} - passed_on
    assert not unread, f"StepSpec does not read {sorted(unread)}"


def test_a_snapshot_written_before_versions_and_newer_fields_is_read_with_defaults() -> None:
    old = {
        "workflow": "old",
        "params": {},
        "env": {},
        "mode": "canvas",
        "steps": [{"id": "a", "needs": [], "command": "true", "env": {}, "vars": {}}],
    }
    snap = RunSnapshot.parse("r1", old)
    step = snap.steps["a"]
    assert snap.version == 1 and snap.max_active_steps == 0 and snap.secrets == ()
    assert step.retries is None and step.approval is None and step.skip_on_exit_codes == ()
    assert step.continue_on_error is False and step.shell_script is None and not step.fans_out


def test_a_newer_version_is_refused_before_anything_is_read() -> None:
    newer = {"version": SNAPSHOT_VERSION + 1, "workflow": "future", "steps": "not a list"}
    with pytest.raises(UnsupportedSnapshot):
        RunSnapshot.parse("r1", newer)


def test_the_typed_snapshot_cannot_be_changed(stored: dict) -> None:  # type: ignore[type-arg]
    snap = RunSnapshot.parse("r1", stored)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.steps["build"].command = "rm -rf /"  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.steps["build"].env["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.steps["zzz"] = snap.steps["build"]  # type: ignore[index]
