"""Sub-workflows end to end on a real worker: a step with ``uses:`` runs another workflow
file as a child run, linked both ways, frozen at the parent's trigger, waited for without
a worker, its outputs and status becoming the step's; cancel goes down the tree and a
rerun reuses a child that succeeded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import QUEUE, run_cli, wait_for_event

from runbook_celery import submit
from runbook_celery.client.api import rerun
from runbook_celery.client.render import record_json
from runbook_celery.client.run import Run
from runbook_celery.definition.subworkflow import child_run_id
from runbook_celery.engine.app import STEP_TASK, app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

CHILD = """
name: child
params:
  tag: {required: true}
  count: {type: number, default: 1}
outputs:
  artifact: ${{ steps.make.outputs.artifact }}
steps:
  - id: make
    run: echo "artifact=app-${{ params.tag }}-x${{ params.count }}" >> "$RUNBOOK_OUTPUT"
"""

PARENT = """
name: parent
steps:
  - id: prep
    run: echo "tag=v1" >> "$RUNBOOK_OUTPUT"
  - id: build
    needs: prep
    uses: lib/child.yaml
    with:
      tag: ${{ steps.prep.outputs.tag }}
      count: 3
  - id: after
    needs: build
    run: echo "got=${{ steps.build.outputs.artifact }}" >> "$RUNBOOK_OUTPUT"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
def test_child_outputs_flow_to_a_later_parent_step_and_runs_are_linked_both_ways(tmp_path):
    # Given a parent whose build step uses lib/child.yaml with a value from an earlier step
    _write(tmp_path, "lib/child.yaml", CHILD)
    parent = _write(tmp_path, "parent.yaml", PARENT)

    # When it runs
    record = submit(parent).wait(timeout=60)

    # Then the child ran with the with: values as params and its outputs reached `after`
    assert record.status == "succeeded", record.to_dict()
    child_id = child_run_id(record.id, "build")
    assert record.steps["build"].outputs == {"artifact": "app-v1-x3"}
    assert record.steps["after"].outputs == {"got": "app-v1-x3"}
    # linked both ways: the parent lists its child, the child names its parent and step
    assert record.children == {"build": child_id}
    assert record.steps["build"].child_run == child_id
    child = Run(child_id).status()
    assert child.status == "succeeded"
    assert child.params == {"tag": "v1", "count": "3"}
    assert (child.parent_run, child.parent_step) == (record.id, "build")
    assert child.outputs == {"artifact": "app-v1-x3"}
    # in every view: to_dict, the web API's shape, status and status --json
    assert record.to_dict()["children"] == {"build": child_id}
    assert record_json(child)["parent_run"] == record.id
    shown = run_cli("status", record.id)
    assert shown.returncode == 0, shown.stderr
    assert f"child     {child_id} (step build)" in shown.stdout
    as_json = run_cli("status", child_id, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["parent_run"], data["parent_step"]) == (record.id, "build")


@pytest.mark.timeout(120)
def test_a_failed_child_fails_the_step_and_continue_on_error_lets_the_run_go_on(tmp_path):
    # Given a child whose step fails, used by one step plainly and by one that may fail
    _write(
        tmp_path,
        "lib/broken.yaml",
        """
name: broken
steps:
  - id: boom
    run: echo "no disk" >&2; exit 3
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: parent-of-broken
steps:
  - id: tolerant
    uses: lib/broken.yaml
    continue_on_error: true
  - id: next
    needs: tolerant
    run: echo "went on"
  - id: strict
    uses: lib/broken.yaml
  - id: never
    needs: strict
    run: echo "must not run"
""",
    )

    # When it runs
    record = submit(parent).wait(timeout=60)

    # Then each child failed, failing its step (reason child_failed, the child's stderr shown)
    assert record.status == "failed", record.to_dict()
    for sid in ("tolerant", "strict"):
        step = record.steps[sid]
        assert step.status == "failed"
        assert step.reason == "child_failed"
        assert any("no disk" in line for line in step.stderr_tail), step.stderr_tail
        assert Run(step.child_run or "").status().status == "failed"
    # continue_on_error let `next` run; `never` was skipped behind the strict failure
    assert record.steps["tolerant"].allowed_failure
    assert record.steps["next"].status == "succeeded"
    assert record.steps["never"].status == "skipped"


@pytest.mark.timeout(120)
def test_cancelling_the_parent_cancels_the_child_and_the_grandchild(tmp_path, store):
    # Given a three-level tree whose grandchild waits until cancelled
    _write(
        tmp_path,
        "lib/grandchild.yaml",
        """
name: grandchild
steps:
  - id: wait
    run: sleep 300 & wait
""",
    )
    _write(
        tmp_path,
        "lib/middle.yaml",
        """
name: middle
steps:
  - id: inner
    uses: grandchild.yaml
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: top
steps:
  - id: outer
    uses: lib/middle.yaml
  - id: after
    needs: outer
    run: echo "must not run"
""",
    )
    run = submit(parent)
    middle = child_run_id(run.id, "outer")
    grandchild = child_run_id(middle, "inner")
    wait_for_event(store, grandchild, "step_started", "wait", timeout=60)

    # When the top run is cancelled
    run.cancel(by="tester")

    # Then the cancel reaches the grandchild, and every level ends cancelled
    final = run.wait(timeout=60)
    assert final.status == "cancelled", final.to_dict()
    assert final.steps["outer"].status == "cancelled"
    assert final.steps["after"].status in ("cancelled", "skipped")
    assert Run(middle).status().status == "cancelled"
    bottom = Run(grandchild).status()
    assert bottom.status == "cancelled"
    assert bottom.steps["wait"].status == "cancelled"
    assert (bottom.parent_run, bottom.parent_step) == (middle, "inner")


@pytest.mark.timeout(120)
def test_editing_the_child_file_mid_run_changes_nothing(tmp_path, store):
    # Given a parent whose first step waits for a signal file before the child starts
    gate = tmp_path / "go"
    child = _write(tmp_path, "lib/child.yaml", CHILD)
    _write(tmp_path, "lib/make.sh", 'echo "from=script-v1" >> "$RUNBOOK_OUTPUT"\n')
    _write(
        tmp_path,
        "lib/scripted.yaml",
        """
name: scripted
outputs:
  from: ${{ steps.s.outputs.from }}
steps:
  - id: s
    script: make.sh
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        f"""
name: edited
steps:
  - id: hold
    run: |
      while [ ! -e {gate} ]; do sleep 0.1; done
      echo "tag=v1" >> "$RUNBOOK_OUTPUT"
  - id: build
    needs: hold
    uses: lib/child.yaml
    with:
      tag: ${{{{ steps.hold.outputs.tag }}}}
  - id: scripted
    needs: hold
    uses: lib/scripted.yaml
""",
    )
    run = submit(parent)
    wait_for_event(store, run.id, "step_started", "hold", timeout=60)

    # When the used files are edited (and the script too) before the children start
    child.write_text(CHILD.replace("app-", "EDITED-"))
    _write(tmp_path, "lib/make.sh", 'echo "from=EDITED" >> "$RUNBOOK_OUTPUT"\n')
    gate.touch()

    # Then the children ran what was frozen when the parent was triggered
    record = run.wait(timeout=60)
    assert record.status == "succeeded", record.to_dict()
    assert record.steps["build"].outputs == {"artifact": "app-v1-x1"}
    assert record.steps["scripted"].outputs == {"from": "script-v1"}


@pytest.mark.timeout(150)
def test_rerun_from_failed_reuses_a_child_that_succeeded(tmp_path, store):
    # Given a run whose child succeeded and whose last step failed once
    flag = tmp_path / "passes-now"
    _write(tmp_path, "lib/child.yaml", CHILD)
    parent = _write(
        tmp_path,
        "parent.yaml",
        f"""
name: rerun-parent
steps:
  - id: build
    uses: lib/child.yaml
    with: {{tag: v7}}
  - id: deploy
    needs: build
    run: |
      test -e {flag}
      echo "deployed=${{{{ steps.build.outputs.artifact }}}}" >> "$RUNBOOK_OUTPUT"
""",
    )
    first = submit(parent).wait(timeout=60)
    assert first.status == "failed", first.to_dict()
    assert first.steps["build"].status == "succeeded"

    # When it is rerun from the failed step
    flag.touch()
    second = rerun(first.id, from_failed=True).wait(timeout=60)

    # Then the child's step is reused (no second child run) and its outputs still flow
    assert second.status == "succeeded", second.to_dict()
    assert second.steps["build"].reused
    assert second.steps["deploy"].outputs == {"deployed": "app-v7-x1"}
    assert store.run_status(child_run_id(second.id, "build")) is None
    assert store.run_status(child_run_id(first.id, "build")) == "succeeded"
    # and it links to the child run whose outputs it reuses, as the original step did
    assert second.steps["build"].child_run == first.steps["build"].child_run
    assert first.steps["build"].child_run == child_run_id(first.id, "build")


@pytest.mark.timeout(120)
def test_a_three_level_tree_passes_outputs_up(tmp_path):
    # Given top uses middle uses leaf, each level passing a param down and an output up
    _write(
        tmp_path,
        "lib/leaf.yaml",
        """
name: leaf
params:
  word: {required: true}
outputs:
  said: ${{ steps.say.outputs.said }}
steps:
  - id: say
    run: echo "said=leaf-${{ params.word }}" >> "$RUNBOOK_OUTPUT"
""",
    )
    _write(
        tmp_path,
        "lib/middle.yaml",
        """
name: middle
params:
  word: {required: true}
outputs:
  said: middle-${{ steps.call.outputs.said }}
steps:
  - id: call
    uses: leaf.yaml
    with: {word: "${{ params.word }}"}
""",
    )
    top = _write(
        tmp_path,
        "top.yaml",
        """
name: top
steps:
  - id: call
    uses: lib/middle.yaml
    with: {word: hello}
  - id: show
    needs: call
    run: echo "got=${{ steps.call.outputs.said }}" >> "$RUNBOOK_OUTPUT"
""",
    )

    # When it runs
    record = submit(top).wait(timeout=60)

    # Then the leaf's output came up through the middle to the top
    assert record.status == "succeeded", record.to_dict()
    assert record.steps["show"].outputs == {"got": "middle-leaf-hello"}
    middle = Run(child_run_id(record.id, "call")).status()
    assert middle.outputs == {"said": "middle-leaf-hello"}
    assert middle.children == {"call": child_run_id(middle.id, "call")}


@pytest.mark.timeout(120)
def test_pausing_the_parent_pauses_the_child_and_resuming_resumes_it(tmp_path, store):
    # Given a child whose first step waits for a file and whose second step follows it
    gate = tmp_path / "go"
    _write(
        tmp_path,
        "lib/two.yaml",
        f"""
name: two
steps:
  - id: first
    run: while [ ! -e {gate} ]; do sleep 0.1; done
  - id: second
    needs: first
    run: echo second
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: pausing
steps:
  - id: call
    uses: lib/two.yaml
""",
    )
    run = submit(parent)
    child = child_run_id(run.id, "call")
    wait_for_event(store, child, "step_started", "first", timeout=60)

    # When the parent is paused, and the child's running step then ends
    run.pause(by="tester")
    assert wait_for_event(store, child, "workflow_paused", timeout=10)["by"] == "tester"
    gate.touch()
    wait_for_event(store, child, "step_waiting", "second", timeout=30)

    # Then the child's next step waits, paused; resuming the parent lets it run
    assert Run(child).status().status == "paused"
    assert Run(child).status().steps["second"].status == "waiting"
    run.resume(by="tester")
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert Run(child).status().steps["second"].status == "succeeded"


@pytest.mark.timeout(120)
def test_a_waiting_step_delivered_again_does_not_start_a_second_child(tmp_path, store):
    # Given a parent step waiting for its child, whose step waits for a file
    gate = tmp_path / "go"
    _write(
        tmp_path,
        "lib/slow.yaml",
        f"""
name: slow
outputs:
  done: ${{{{ steps.work.outputs.done }}}}
steps:
  - id: work
    run: |
      while [ ! -e {gate} ]; do sleep 0.1; done
      echo "done=yes" >> "$RUNBOOK_OUTPUT"
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: redelivered
steps:
  - id: call
    uses: lib/slow.yaml
""",
    )
    run = submit(parent)
    child = child_run_id(run.id, "call")
    wait_for_event(store, run.id, "step_awaiting_child", "call", timeout=60)
    wait_for_event(store, child, "step_started", "work", timeout=60)

    # When the step's message comes again (as after a worker lost before it parked)
    app.signature(STEP_TASK, args=(run.id, "call"), immutable=True).apply_async(queue=QUEUE)
    deadline = time.monotonic() + 30
    waits = 0
    for _, event in store.follow_events(run.id, block_ms=500):
        waits += event.get("type") == "step_awaiting_child"
        if waits == 2:
            break
        assert time.monotonic() < deadline, "the step was not delivered again"
    gate.touch()

    # Then that delivery found the same child and waited again; one child ran, once
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["call"].outputs == {"done": "yes"}
    assert final.steps["call"].attempts == 2
    children = [
        r.decode()
        for r in store.r.zrange(store.keys.runs_index, 0, -1)
        if store.r.hget(store.keys.run(r.decode()), "parent_run") == run.id.encode()
    ]
    assert children == [child]
    started = [e for _, e in store.events(child) if e["type"] == "step_started"]
    assert len(started) == 1


@pytest.mark.timeout(120)
def test_a_child_that_ended_without_handing_on_is_found_by_the_reconciler(tmp_path, store):
    # Given a parent waiting for a child whose only step waits for an approval
    _write(
        tmp_path,
        "lib/gated.yaml",
        """
name: gated
steps:
  - id: wait
    approval: {prompt: "go?"}
    run: echo approved
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: net
steps:
  - id: call
    uses: lib/gated.yaml
""",
    )
    run = submit(parent)
    child = child_run_id(run.id, "call")
    wait_for_event(store, run.id, "step_awaiting_child", "call", timeout=60)
    wait_for_event(store, child, "step_awaiting_approval", "wait", timeout=60)

    # When the child ends where nothing hands on (its record cancelled directly in the
    # store, as a client that died after its cancel would leave it)
    _, final_status = store.cancel_run(child, reason="cancelled")
    assert final_status == "cancelled"

    # Then a worker's reconciler finishes the waiting step, and the parent run ends
    # (failed: the child was cancelled on its own, not by a cancel of this run)
    final = run.wait(timeout=60)
    assert final.status == "failed", final.to_dict()
    assert final.steps["call"].status == "failed"
    assert final.steps["call"].reason == "child_failed"
    assert final.steps["call"].stderr_tail[0] == f"[runbook] child run {child} cancelled"


@pytest.mark.timeout(120)
def test_a_cleanup_step_with_uses_runs_its_child_after_a_cancel(tmp_path, store):
    # Given a long step and an always() cleanup step that uses another workflow
    _write(
        tmp_path,
        "lib/cleanup.yaml",
        """
name: cleanup
params:
  status: {required: true}
outputs:
  saw: ${{ steps.tidy.outputs.saw }}
steps:
  - id: tidy
    run: echo "saw=${{ params.status }}" >> "$RUNBOOK_OUTPUT"
""",
    )
    parent = _write(
        tmp_path,
        "parent.yaml",
        """
name: with-cleanup
steps:
  - id: work
    run: sleep 300 & wait
  - id: cleanup
    needs: work
    if: always()
    uses: lib/cleanup.yaml
    with: {status: "${{ steps.work.status }}"}
""",
    )
    run = submit(parent)
    wait_for_event(store, run.id, "step_started", "work", timeout=60)

    # When the run is cancelled
    run.cancel(by="tester")

    # Then the cleanup step still ran its child, which saw the cancelled step
    final = run.wait(timeout=60)
    assert final.status == "cancelled", final.to_dict()
    assert final.steps["work"].status == "cancelled"
    assert final.steps["cleanup"].status == "succeeded"
    assert final.steps["cleanup"].outputs == {"saw": "cancelled"}
    assert Run(child_run_id(run.id, "cleanup")).status().status == "succeeded"


@pytest.mark.timeout(150)
def test_the_web_api_and_run_pages_link_parent_and_child(tmp_path):
    from web_helpers import web_flower

    # Given a finished run whose step used a child workflow
    _write(tmp_path, "lib/child.yaml", CHILD)
    parent = _write(tmp_path, "parent.yaml", PARENT)
    record = submit(parent).wait(timeout=60)
    child = child_run_id(record.id, "build")

    (tmp_path / "logs").mkdir()
    with web_flower(tmp_path / "logs") as fl:
        # When the web API and the run pages are read
        parent_json = fl.request("GET", f"/api/runs/{record.id}")
        child_json = fl.request("GET", f"/api/runs/{child}")
        parent_page = fl.request("GET", f"/runs/{record.id}")
        child_page = fl.request("GET", f"/runs/{child}")

    # Then both say how they are linked, in status --json's shape
    assert parent_json.status == 200 and child_json.status == 200
    assert parent_json.json["children"] == {"build": child}
    assert parent_json.json["steps"]["build"]["child_run"] == child
    assert (child_json.json["parent_run"], child_json.json["parent_step"]) == (record.id, "build")
    assert f'href="/runs/{child}"' in parent_page.text
    assert f'href="/runs/{record.id}"' in child_page.text and "(step build)" in child_page.text
