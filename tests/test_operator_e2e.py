"""Operator control end to end: pause/resume, approvals, decisions on failure, concurrency.

Each test that claims "no worker slot is held" runs on its own worker with concurrency 1:
if a waiting step held the slot, the other work could not finish.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SESSION, WorkerProcess, run_cli, wait_for_event

from runbook_celery import submit
from runbook_celery.client import control as control_module
from runbook_celery.client.control import RunControl
from runbook_celery.core.errors import InvalidOperation

pytestmark = [pytest.mark.slow]


@pytest.fixture
def solo():  # type: ignore[no-untyped-def]
    """A worker with a single slot on a queue of its own."""
    queue = f"solo-{SESSION}"
    w = WorkerProcess("solo", queues=queue, concurrency=1)
    yield queue
    w.stop()


def _started(store, run_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["step"] for _, e in store.events(run_id) if e["type"] == "step_started"]


def test_paused_run_starts_nothing_until_resumed(solo, write_workflow, tmp_path, store):
    release = tmp_path / "release"
    wf = write_workflow(f"""
name: pausable
steps:
  - id: a
    queue: {solo}
    run: while [ ! -e {release} ]; do sleep 0.02; done
  - id: b
    needs: [a]
    queue: {solo}
    run: echo "b=ran" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [b]
    queue: {solo}
    run: 'true'
""")
    other = write_workflow(
        f"name: other\nsteps:\n  - id: x\n    queue: {solo}\n    run: 'true'\n", "other.yaml"
    )
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "a")
    assert run_cli("pause", run.id, "--by", "alice").returncode == 0
    assert run.status().status == "paused"
    release.touch()
    wait_for_event(store, run.id, "step_succeeded", "a")
    wait_for_event(store, run.id, "step_waiting", "b")
    # the waiting step holds no worker slot: another run on the same single slot finishes
    assert submit(other).wait(timeout=60).status == "succeeded"
    record = run.status()
    assert record.status == "paused"
    assert record.control["paused_by"] == "alice" and record.control["paused_at"]
    assert _started(store, run.id) == ["a"]
    assert run_cli("resume", run.id).returncode == 0
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert _started(store, run.id) == ["a", "b", "c"]
    assert final.steps["b"].started_at >= final.control["resumed_at"]


APPROVAL = """
name: gated
steps:
  - id: build
    queue: {queue}
    run: echo "artifact=app.tgz" >> "$RUNBOOK_OUTPUT"
  - id: deploy
    needs: [build]
    queue: {queue}
    approval: {{prompt: "Deploy to prod?"}}
    run: echo "deployed=${{{{ steps.build.outputs.artifact }}}}" >> "$RUNBOOK_OUTPUT"
"""


def test_approval_gate_waits_then_continues_on_approve(solo, write_workflow, store):
    wf = write_workflow(APPROVAL.format(queue=solo))
    run = submit(wf)
    event = wait_for_event(store, run.id, "step_awaiting_approval", "deploy")
    assert event["prompt"] == "Deploy to prod?"
    other = write_workflow(
        f"name: o\nsteps:\n  - id: x\n    queue: {solo}\n    run: 'true'\n", "o.yaml"
    )
    assert submit(other).wait(timeout=60).status == "succeeded"  # no slot held
    assert run.status().steps["deploy"].status == "awaiting_approval"
    res = run_cli("approve", run.id, "deploy", "--by", "bob")
    assert res.returncode == 0, res.stderr
    final = run.wait(timeout=60)
    assert final.status == "succeeded"
    assert final.steps["deploy"].outputs == {"deployed": "app.tgz"}
    assert final.steps["deploy"].control["approved_by"] == "bob"


def test_approval_gate_fails_the_step_on_reject(solo, write_workflow, store):
    run = submit(write_workflow(APPROVAL.format(queue=solo)))
    wait_for_event(store, run.id, "step_awaiting_approval", "deploy")
    assert run_cli("reject", run.id, "deploy", "--by", "carol").returncode == 0
    final = run.wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["deploy"].status == "failed"
    assert final.steps["deploy"].reason == "rejected"
    rejected = [e for _, e in store.events(run.id) if e["type"] == "step_rejected"]
    assert rejected and rejected[0]["by"] == "carol"


def test_approve_of_a_step_not_waiting_is_an_error(write_workflow, worker):
    run = submit(write_workflow("name: n\nsteps:\n  - id: s\n    run: 'true'\n"))
    run.wait(timeout=60)
    res = run_cli("approve", run.id, "s")
    assert res.returncode == 2 and "not awaiting approval" in res.stderr


DECISION = """
name: decide
steps:
  - id: flaky
    queue: {queue}
    on_failure: pause
    run: |
      [ "${{FIX:-0}}" = 1 ] || {{ echo "broken" >&2; exit 5; }}
      echo "value=fixed" >> "$RUNBOOK_OUTPUT"
  - id: use
    needs: [flaky]
    queue: {queue}
    run: echo "got=${{{{ steps.flaky.outputs.value }}}}" >> "$RUNBOOK_OUTPUT"
"""


def test_on_failure_pause_then_retry_with_changed_env(solo, write_workflow, store):
    run = submit(write_workflow(DECISION.format(queue=solo)))
    wait_for_event(store, run.id, "step_awaiting_decision", "flaky")
    record = run.status()
    assert record.status == "awaiting_decision"
    assert record.steps["flaky"].exit_code == 5
    res = run_cli("retry", run.id, "flaky", "--env", "FIX=1", "--by", "dave")
    assert res.returncode == 0, res.stderr
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["use"].outputs == {"got": "fixed"}
    assert final.steps["flaky"].attempts == 2
    decisions = [e for _, e in store.events(run.id) if e["type"] == "step_decision_retry"]
    assert decisions[0]["by"] == "dave" and decisions[0]["ts"]


def test_on_failure_pause_then_skip_with_a_supplied_output(solo, write_workflow, store):
    run = submit(write_workflow(DECISION.format(queue=solo)))
    wait_for_event(store, run.id, "step_awaiting_decision", "flaky")
    res = run_cli("skip", run.id, "flaky", "--output", "value=manual")
    assert res.returncode == 0, res.stderr
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["flaky"].status == "skipped"
    assert final.steps["use"].outputs == {"got": "manual"}


def test_on_failure_pause_then_abort_fails_the_run(solo, write_workflow, store):
    run = submit(write_workflow(DECISION.format(queue=solo)))
    wait_for_event(store, run.id, "step_awaiting_decision", "flaky")
    assert run_cli("abort", run.id).returncode == 0
    final = run.wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["flaky"].status == "failed" and final.steps["flaky"].exit_code == 5
    assert final.steps["use"].status == "skipped"


def test_two_decisions_on_one_gate_record_one(solo, write_workflow, store, monkeypatch):
    """Two operators read the same waiting step at once, one skips and one aborts: the
    decision and the step's end are one transition, so exactly one of them is recorded
    and the other is told the step is decided (before, both decision events were written
    and the run status could be set back to running after it ended)."""
    run = submit(write_workflow(DECISION.format(queue=solo)))
    wait_for_event(store, run.id, "step_awaiting_decision", "flaky")
    both_read = threading.Barrier(2, timeout=10)
    record_end = control_module.finish_outside

    def wait_then_record(*args: Any, **kwargs: Any) -> None:
        both_read.wait()  # both have read the step awaiting a decision
        record_end(*args, **kwargs)

    monkeypatch.setattr(control_module, "finish_outside", wait_then_record)
    outcomes: dict[str, str] = {}

    def decide(name: str, act: Callable[[], None]) -> None:
        try:
            act()
            outcomes[name] = "done"
        except InvalidOperation as e:
            outcomes[name] = str(e)

    control = RunControl(run.id)
    threads = [
        threading.Thread(target=decide, args=("skip", lambda: control.skip_step("flaky"))),
        threading.Thread(target=decide, args=("abort", lambda: control.abort())),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["abort", "skip"]
    winner = [n for n, o in outcomes.items() if o == "done"]
    assert len(winner) == 1, outcomes
    loser = "abort" if winner == ["skip"] else "skip"
    assert "not awaiting decision" in outcomes[loser]
    final = run.wait(timeout=60)
    assert final.status == ("succeeded" if winner == ["skip"] else "failed"), final.to_dict()
    types = [e["type"] for _, e in store.events(run.id)]
    decided = [t for t in types if t.startswith("step_decision_")]
    assert decided == [f"step_decision_{winner[0]}"]
    assert types[-1] == f"workflow_{final.status}"


GROUP = """
name: deploy-{name}
params:
  env: prod
concurrency: {{group: "deploy-{session}-${{{{ params.env }}}}", limit: 1, on_conflict: {policy}}}
steps:
  - id: go
    run: |
      while [ ! -e {release} ]; do sleep 0.02; done
      echo "env=${{{{ params.env }}}}" >> "$RUNBOOK_OUTPUT"
"""


def test_concurrency_group_queue_never_overlaps(worker, write_workflow, tmp_path, store):
    release = tmp_path / "release"
    text = GROUP.format(name="q", session=SESSION, policy="queue", release=release)
    wf = write_workflow(text)
    first, second = submit(wf), submit(wf)
    wait_for_event(store, first.id, "step_started", "go")
    assert second.status().status == "queued"
    other_env = submit(wf, {"env": "staging"})  # another group: not held back
    wait_for_event(store, other_env.id, "step_started", "go")
    release.touch()
    a, b = first.wait(timeout=60), second.wait(timeout=60)
    assert a.status == b.status == "succeeded"
    assert b.steps["go"].started_at >= a.steps["go"].finished_at
    assert other_env.wait(timeout=60).status == "succeeded"


def test_concurrency_group_cancel_running_cancels_the_first(
    worker, write_workflow, tmp_path, store
):
    release = tmp_path / "release"
    wf = write_workflow(
        GROUP.format(name="c", session=SESSION, policy="cancel_running", release=release)
    )
    first = submit(wf)
    wait_for_event(store, first.id, "step_started", "go")
    second = submit(wf)
    assert first.wait(timeout=60).status == "cancelled"
    release.touch()
    final = second.wait(timeout=60)
    assert final.status == "succeeded"


def test_concurrency_group_skip_records_the_new_run_skipped(
    worker, write_workflow, tmp_path, store
):
    release = tmp_path / "release"
    wf = write_workflow(GROUP.format(name="s", session=SESSION, policy="skip", release=release))
    first = submit(wf)
    wait_for_event(store, first.id, "step_started", "go")
    second = submit(wf)
    assert second.wait(timeout=10).status == "skipped"
    release.touch()
    assert first.wait(timeout=60).status == "succeeded"
    res = run_cli("status", second.id, "--json")
    assert json.loads(res.stdout)["status"] == "skipped"


def test_max_active_steps_serialises_a_wide_fan_out(worker, write_workflow, tmp_path):
    log = tmp_path / "log"
    steps = "".join(
        f'  - id: s{i}\n    run: |\n      echo "start $(date +%s.%N)" >> {log}\n'
        f'      sleep 0.1\n      echo "end $(date +%s.%N)" >> {log}\n'
        for i in range(6)
    )
    wf = write_workflow(f"name: narrow\nmax_active_steps: 1\nsteps:\n{steps}")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    kinds = [line.split()[0] for line in log.read_text().splitlines()]
    assert kinds == ["start", "end"] * 6


def test_priority_orders_waiting_steps(solo, write_workflow, tmp_path, store):
    release = tmp_path / "release"
    order = tmp_path / "order"
    blocker = write_workflow(
        f"name: blocker\nsteps:\n  - id: b\n    queue: {solo}\n"
        f"    run: while [ ! -e {release} ]; do sleep 0.02; done\n",
        "blocker.yaml",
    )
    low = write_workflow(
        f"name: low\npriority: 1\nsteps:\n  - id: s\n    queue: {solo}\n"
        f"    run: echo low >> {order}\n",
        "low.yaml",
    )
    high = write_workflow(
        f"name: high\npriority: 8\nsteps:\n  - id: s\n    queue: {solo}\n"
        f"    run: echo high >> {order}\n",
        "high.yaml",
    )
    b = submit(blocker)
    wait_for_event(store, b.id, "step_started", "b")
    runs = [submit(low), submit(high)]
    release.touch()
    for r in runs:
        assert r.wait(timeout=60).status == "succeeded"
    assert order.read_text().split() == ["high", "low"]


PAUSED_AFTER_A = """
name: paused-cancel
steps:
  - id: a
    queue: {queue}
    run: while [ ! -e {release} ]; do sleep 0.02; done
  - id: b
    needs: [a]
    queue: {queue}
    run: 'true'
"""


@pytest.mark.parametrize("parked", ["awaiting_approval", "awaiting_decision", "waiting"])
def test_cancel_ends_a_run_whose_step_is_parked_at_a_gate(
    parked, solo, write_workflow, tmp_path, store
):
    """A step parked at a gate has no live copy: a cancel ends it and so the run (it hung)."""
    release = tmp_path / "release"
    if parked == "awaiting_approval":
        run = submit(write_workflow(APPROVAL.format(queue=solo)))
        wait_for_event(store, run.id, "step_awaiting_approval", "deploy")
        step = "deploy"
    elif parked == "awaiting_decision":
        run = submit(write_workflow(DECISION.format(queue=solo)))
        wait_for_event(store, run.id, "step_awaiting_decision", "flaky")
        step = "flaky"
    else:
        run = submit(write_workflow(PAUSED_AFTER_A.format(queue=solo, release=release)))
        wait_for_event(store, run.id, "step_started", "a")
        assert run_cli("pause", run.id).returncode == 0
        release.touch()
        wait_for_event(store, run.id, "step_waiting", "b")
        step = "b"
    assert run.status().steps[step].status == parked
    assert run_cli("cancel", run.id).returncode == 0
    final = run.wait(timeout=60)
    assert final.status == "cancelled", final.to_dict()
    assert final.steps[step].status == "cancelled"
    cancelled = [e["step"] for _, e in store.events(run.id) if e["type"] == "step_cancelled"]
    assert cancelled.count(step) == 1
