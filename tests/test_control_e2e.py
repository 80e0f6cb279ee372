"""Failure handling end to end: retries, timeouts, conditions, fan-out, queues, cancel, rerun,
lost workers and graceful shutdown, on real Celery workers and real Redis."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import SESSION, WorkerProcess, run_cli, wait_for_event

from runbook_celery import RunFailed, submit
from runbook_celery.client.api import rerun
from runbook_celery.client.run import Run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" not in fh.read()
    except FileNotFoundError:
        return False


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_flaky_step_succeeds_on_its_third_attempt(write_workflow, tmp_path, store):
    counter = tmp_path / "count"
    wf = write_workflow(f"""
name: flaky
steps:
  - id: flaky
    retries: {{limit: 3, delay: 0.2, backoff: 2, max_delay: 1}}
    run: |
      n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))
      echo $n > {counter}
      echo "attempt $n" >&2
      [ "$n" -ge 3 ]
      echo "tries=$n" >> "$RUNBOOK_OUTPUT"
  - id: after
    needs: [flaky]
    run: echo "saw=${{{{ steps.flaky.outputs.tries }}}}" >> "$RUNBOOK_OUTPUT"
""")
    run = submit(wf)
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    flaky = final.steps["flaky"]
    assert flaky.attempts == 3
    assert [h["exit_code"] for h in flaky.history] == [1, 1, 0]
    assert final.steps["after"].outputs == {"saw": "3"}
    retrying = [e for _, e in store.events(run.id) if e["type"] == "step_retrying"]
    assert [e["attempt"] for e in retrying] == ["1", "2"]
    assert [e["delay"] for e in retrying] == ["0.2", "0.4"]


def test_retries_stop_at_the_limit_and_respect_exit_codes(write_workflow):
    wf = write_workflow("""
name: no-retry
steps:
  - id: wrong-code
    retries: {limit: 5, on_exit_codes: [75]}
    run: exit 3
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["wrong-code"].attempts == 1
    assert final.steps["wrong-code"].exit_code == 3


def test_timeout_kills_the_step_and_its_grandchildren(write_workflow, tmp_path):
    pids = tmp_path / "pids"
    wf = write_workflow(f"""
name: slow
steps:
  - id: slow
    timeout: 1
    kill_grace: 1
    run: |
      bash -c 'sleep 300 & echo $! >> {pids}; wait' &
      echo $! >> {pids}
      sleep 300 &
      echo $! >> {pids}
      wait
""")
    final = submit(wf).wait(timeout=60)
    step = final.steps["slow"]
    assert final.status == "failed"
    assert step.status == "failed"
    assert step.reason == "timeout"
    found = _pids(pids)
    assert len(found) == 3
    assert not [p for p in found if _alive(p)]
    assert any("timed out" in line for line in step.stderr_tail)


def test_continue_on_error_records_the_failure_and_goes_on(write_workflow):
    wf = write_workflow("""
name: lenient
steps:
  - id: optional
    continue_on_error: true
    run: exit 9
  - id: next
    needs: [optional]
    run: echo "ran=yes" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded"
    assert final.steps["optional"].status == "failed"
    assert final.steps["optional"].exit_code == 9
    assert final.steps["next"].outputs == {"ran": "yes"}


CLEANUP = """
name: with-cleanup
params:
  fail: "no"
steps:
  - id: work
    run: '[ "${{ params.fail }}" != "yes" ]'
  - id: after-work
    needs: [work]
    run: echo ok
  - id: on-failure
    needs: [after-work]
    if: failure()
    run: echo "cleaned=1" >> "$RUNBOOK_OUTPUT"
  - id: notify
    needs: [after-work]
    if: always()
    run: echo "notified=1" >> "$RUNBOOK_OUTPUT"
  - id: only-if-changed
    needs: [work]
    if: ${{ params.fail == 'no' }}
    run: echo fine
"""


def test_failure_cleanup_runs_only_on_failure_and_always_runs_either_way(write_workflow):
    wf = write_workflow(CLEANUP)
    good = submit(wf, {"fail": "no"}).wait(timeout=60)
    assert good.status == "succeeded", good.to_dict()
    assert good.steps["on-failure"].status == "skipped"
    assert good.steps["notify"].outputs == {"notified": "1"}
    assert good.steps["only-if-changed"].status == "succeeded"

    bad = submit(wf, {"fail": "yes"}).wait(timeout=60)
    assert bad.status == "failed"
    assert bad.steps["work"].status == "failed"
    assert bad.steps["after-work"].status == "skipped"
    assert bad.steps["on-failure"].outputs == {"cleaned": "1"}
    assert bad.steps["notify"].outputs == {"notified": "1"}
    assert bad.steps["only-if-changed"].status == "skipped"


def test_matrix_two_by_two_runs_four_instances_and_feeds_a_list(write_workflow):
    wf = write_workflow("""
name: matrix
steps:
  - id: test
    matrix: {py: ["3.11", "3.12"], os: [a, b]}
    run: echo "name=${{ matrix.py }}-${{ matrix.os }}" >> "$RUNBOOK_OUTPUT"
  - id: report
    needs: [test]
    run: |
      echo "all=${{ steps.test.outputs.name }}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    instances = [s for s in final.steps if s.startswith("test[")]
    assert len(instances) == 4
    names = [final.steps[i].outputs["name"] for i in instances]
    assert sorted(names) == ["3.11-a", "3.11-b", "3.12-a", "3.12-b"]
    assert final.steps["report"].outputs == {"all": '["3.11-a","3.11-b","3.12-a","3.12-b"]'}


def test_for_each_over_an_upstream_list_respects_max_parallel(write_workflow, tmp_path):
    wf = write_workflow(f"""
name: each
steps:
  - id: list
    run: echo 'items=["x", "y; touch {tmp_path}/pwned", "z"]' >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [list]
    for_each: ${{{{ steps.list.outputs.items }}}}
    max_parallel: 1
    run: |
      echo "start $(date +%s.%N)" >> {tmp_path}/log
      sleep 0.2
      echo "end $(date +%s.%N)" >> {tmp_path}/log
      echo "got=${{{{ item }}}}" >> "$RUNBOOK_OUTPUT"
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    got = [final.steps[f"each[{i}]"].outputs["got"] for i in range(3)]
    assert got == ["x", f"y; touch {tmp_path}/pwned", "z"]
    assert not (tmp_path / "pwned").exists()
    events = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end"] * 3  # never two running at once


def test_queue_routes_a_step_to_the_worker_of_that_queue(write_workflow):
    queue = f"special-{SESSION}"
    special = WorkerProcess(
        "special", queues=queue, concurrency=1, env={"TEST_WORKER_NAME": "special"}
    )
    try:
        wf = write_workflow(f"""
name: routed
steps:
  - id: anywhere
    run: echo "who=${{TEST_WORKER_NAME:-main}}" >> "$RUNBOOK_OUTPUT"
  - id: gpu
    needs: [anywhere]
    queue: {queue}
    run: echo "who=${{TEST_WORKER_NAME:-main}}" >> "$RUNBOOK_OUTPUT"
""")
        final = submit(wf).wait(timeout=60)
    finally:
        special.stop()
    assert final.status == "succeeded"
    assert final.steps["anywhere"].outputs == {"who": "main"}
    assert final.steps["gpu"].outputs == {"who": "special"}


def test_cancel_stops_a_running_run_and_leaves_no_process(write_workflow, tmp_path, store):
    pids = tmp_path / "pids"
    wf = write_workflow(f"""
name: long
steps:
  - id: long
    run: |
      sleep 300 &
      echo $! >> {pids}
      wait
  - id: never
    needs: [long]
    run: touch {tmp_path}/never
""")
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "long")
    res = run_cli("cancel", run.id)
    assert res.returncode == 0, res.stderr
    final = run.wait(timeout=60)
    assert final.status == "cancelled"
    assert final.steps["long"].status == "cancelled"
    assert final.steps["never"].status == "cancelled"
    assert not (tmp_path / "never").exists()
    assert _pids(pids) and not [p for p in _pids(pids) if _alive(p)]
    types = [e["type"] for _, e in store.events(run.id)]
    assert "workflow_cancelling" in types and types[-1] == "workflow_cancelled"


def test_rerun_from_failed_runs_only_what_failed(write_workflow, tmp_path):
    count = tmp_path / "count"
    flag = tmp_path / "fixed"
    wf = write_workflow(f"""
name: rerunnable
steps:
  - id: a
    run: |
      echo a >> {count}
      echo "value=from-a" >> "$RUNBOOK_OUTPUT"
  - id: side
    run: echo side >> {count}
  - id: b
    needs: [a]
    run: |
      echo b >> {count}
      [ -e {flag} ]
  - id: c
    needs: [b]
    run: |
      echo c >> {count}
      echo "seen=${{{{ steps.a.outputs.value }}}}" >> "$RUNBOOK_OUTPUT"
""")
    first = submit(wf).wait(timeout=60)
    assert first.status == "failed"
    wf.write_text("name: changed\nsteps:\n  - id: z\n    run: exit 1\n")  # today's YAML: ignored
    flag.touch()
    again = rerun(first.id, from_failed=True)
    final = again.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.rerun_of == first.id
    runs = count.read_text().split()
    assert sorted(runs) == ["a", "b", "b", "c", "side"]
    assert final.steps["a"].reused and final.steps["side"].reused
    assert final.steps["c"].outputs == {"seen": "from-a"}
    assert Run(first.id).status().status == "failed"  # the original is kept as evidence


def test_rerun_from_a_step_reruns_it_and_everything_downstream(write_workflow, tmp_path):
    count = tmp_path / "count"
    wf = write_workflow(f"""
name: rerun-from
steps:
  - id: a
    run: echo a >> {count}
  - id: b
    needs: [a]
    run: echo b >> {count}
  - id: c
    needs: [b]
    run: echo c >> {count}
""")
    first = submit(wf).wait(timeout=60)
    res = run_cli("rerun", first.id, "--from", "b", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(count.read_text().split()) == ["a", "b", "b", "c", "c"]
    bad = run_cli("rerun", first.id, "--from", "nope")
    assert bad.returncode == 2 and "no step 'nope'" in bad.stderr


def test_wait_can_raise_run_failed_with_the_record(write_workflow):
    wf = write_workflow(
        "name: f\nsteps:\n  - id: s\n    run: |\n      echo bad >&2\n      exit 2\n"
    )
    run = submit(wf)
    with pytest.raises(RunFailed) as info:
        run.wait(timeout=60, raise_on_failure=True)
    assert info.value.record.steps["s"].exit_code == 2
    res = run_cli("status", run.id)
    assert "reason=exit_code exit_code=2 attempts=1" in res.stdout
    assert "| bad" in res.stdout


@pytest.mark.parametrize("shape", ["canvas", "dynamic"])
def test_worker_killed_mid_step_a_second_worker_finishes_the_run(
    shape, write_workflow, tmp_path, store
):
    queue = f"lost-{shape}-{SESSION}"
    pids = tmp_path / "pids"
    extra = "  - id: side\n    queue: {q}\n    run: 'true'\n" if shape == "dynamic" else ""
    needs = "[first, side]" if shape == "dynamic" else "[first]"
    wf = write_workflow(f"""
name: survivor
steps:
  - id: first
    queue: {queue}
    run: |
      if [ "$RUNBOOK_STEP_ATTEMPT" = 1 ]; then sleep 300 & echo $! >> {pids}; wait; fi
      echo "attempt=$RUNBOOK_STEP_ATTEMPT" >> "$RUNBOOK_OUTPUT"
{extra.format(q=queue)}  - id: then
    needs: {needs}
    queue: {queue}
    run: echo "done=1" >> "$RUNBOOK_OUTPUT"
  - id: other
    needs: [first]
    queue: {queue}
    run: 'true'
""")
    doomed = WorkerProcess(f"doomed-{shape}", queues=queue, concurrency=2)
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "first")
        rescuer = WorkerProcess(f"rescuer-{shape}", queues=queue, concurrency=2)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.stop()
        final = run.wait(timeout=90)
    finally:
        doomed.stop()
        if "rescuer" in locals():
            rescuer.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.mode == shape
    assert final.steps["first"].attempts == 2
    assert final.steps["first"].outputs == {"attempt": "2"}
    assert final.steps["then"].outputs == {"done": "1"}
    assert not [p for p in _pids(pids) if _alive(p)]
    started = [e["step"] for _, e in store.events(run.id) if e["type"] == "step_started"]
    assert started.count("then") == 1 and started.count("other") == 1


def test_sigterm_hands_running_steps_back_and_leaves_no_orphans(write_workflow, tmp_path, store):
    queue = f"term-{SESSION}"
    pids = tmp_path / "pids"
    flag = tmp_path / "second-delivery"
    wf = write_workflow(f"""
name: handback
steps:
  - id: long
    queue: {queue}
    run: |
      if [ -e {flag} ]; then echo "where=second" >> "$RUNBOOK_OUTPUT"; exit 0; fi
      touch {flag}
      sleep 300 &
      echo $! >> {pids}
      wait
""")
    first = WorkerProcess(
        "term-first", queues=queue, concurrency=1, env={"RUNBOOK_SHUTDOWN_GRACE": "1"}
    )
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "long")
    code = first.stop(sig=signal.SIGTERM, timeout=60)
    assert code == 0
    assert _pids(pids) and not [p for p in _pids(pids) if _alive(p)]
    wait_for_event(store, run.id, "step_handed_back", "long")
    second = WorkerProcess("term-second", queues=queue, concurrency=1)
    try:
        final = run.wait(timeout=60)
    finally:
        second.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["long"].outputs == {"where": "second"}
    assert final.steps["long"].attempts == 1  # a hand-back is not a retry
