"""The engine end to end: a real Celery worker, real Redis, real Bash."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import PREFIX, QUEUE, run_cli, wait_for_event

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def test_n_shaped_dag_lets_c_finish_while_b_still_runs(write_workflow, tmp_path, store):
    # Given a->c, a->d, b->d, where b blocks until the test releases it
    release = tmp_path / "release-b"
    wf = write_workflow(f"""
name: n-shape
steps:
  - id: a
    run: echo "from=a" >> "$RUNBOOK_OUTPUT"
  - id: b
    run: |
      while [ ! -e "{release}" ]; do sleep 0.02; done
      echo "from=b" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [a]
    run: echo "c saw ${{{{ steps.a.outputs.from }}}}"
  - id: d
    needs: [a, b]
    run: |
      echo "got=${{{{ steps.a.outputs.from }}}}+${{{{ steps.b.outputs.from }}}}" \
        >> "$RUNBOOK_OUTPUT"
""")
    run = submit(wf)
    # When c succeeds, b is still running (it cannot finish before we release it)
    wait_for_event(store, run.id, "step_succeeded", "c")
    live = run.status()
    assert live.steps["b"].status == "running"
    assert live.steps["d"].status == "pending"
    release.touch()
    final = run.wait(timeout=60)
    # Then the run succeeds, d ran after both a and b and saw both outputs
    assert final.status == "succeeded", final.to_dict()
    assert final.mode == "dynamic"
    assert final.steps["d"].outputs == {"got": "a+b"}
    assert final.steps["d"].started_at >= final.steps["b"].finished_at
    assert final.steps["c"].finished_at < final.steps["b"].finished_at


def test_diamond_passes_outputs_through_both_branches():
    run = submit(Path(__file__).parent.parent / "definitions" / "diamond.yaml", {"greeting": "hi"})
    final = run.wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.mode == "canvas"
    assert final.steps["left"].outputs == {"value": "left:hi from top"}
    assert final.steps["right"].outputs == {"value": "right:hi from top"}
    assert final.steps["bottom"].outputs == {"summary": "left:hi from top + right:hi from top"}


HOSTILE = "$(touch {marker}) `touch {marker}` ; touch {marker} \" ' \\ ${{HOME}}"


def test_hostile_outputs_and_params_arrive_verbatim_and_execute_nothing(write_workflow, tmp_path):
    marker = tmp_path / "pwned"
    value = HOSTILE.format(marker=marker)
    (tmp_path / "value.txt").write_text(value)
    wf = write_workflow(f"""
name: injection
params:
  p: safe
steps:
  - id: produce
    run: printf 'evil=%s\\n' "$(cat {tmp_path}/value.txt)" >> "$RUNBOOK_OUTPUT"
  - id: consume
    needs: [produce]
    env:
      FROM_ENV: "${{{{ steps.produce.outputs.evil }}}}"
    run: |
      printf '%s' ${{{{ steps.produce.outputs.evil }}}} > {tmp_path}/unquoted.txt
      printf '%s' "${{{{ steps.produce.outputs.evil }}}}" > {tmp_path}/quoted.txt
      printf '%s' "$(printf '%s' "${{{{ params.p }}}}")" > {tmp_path}/param.txt
      printf '%s' "$FROM_ENV" > {tmp_path}/env.txt
""")
    final = submit(wf, {"p": value}).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["produce"].outputs["evil"] == value
    for name in ("unquoted.txt", "quoted.txt", "param.txt", "env.txt"):
        assert (tmp_path / name).read_text() == value, name
    assert not marker.exists()


def test_failing_step_fails_the_run_and_nothing_after_it_runs(write_workflow, tmp_path):
    wf = write_workflow(f"""
name: fails
steps:
  - id: ok
    run: "true"
  - id: boom
    needs: [ok]
    run: |
      echo "about to fail" >&2
      exit 7
  - id: after
    needs: [boom]
    run: touch {tmp_path}/after-ran
  - id: later
    needs: [after]
    run: touch {tmp_path}/later-ran
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    assert final.steps["ok"].status == "succeeded"
    assert final.steps["boom"].status == "failed"
    assert final.steps["boom"].exit_code == 7
    assert final.steps["boom"].reason == "exit_code"
    assert "about to fail" in final.steps["boom"].stderr_tail
    assert final.steps["after"].status == "skipped"
    assert final.steps["later"].status == "skipped"
    assert not (tmp_path / "after-ran").exists()
    assert not (tmp_path / "later-ran").exists()


def test_failure_in_a_non_series_parallel_dag_skips_only_dependents(write_workflow, tmp_path):
    wf = write_workflow(f"""
name: n-fail
steps:
  - id: a
    run: exit 3
  - id: b
    run: touch {tmp_path}/b-ran
  - id: c
    needs: [a]
    run: touch {tmp_path}/c-ran
  - id: d
    needs: [a, b]
    run: touch {tmp_path}/d-ran
""")
    final = submit(wf).wait(timeout=60)
    assert final.status == "failed"
    assert final.mode == "dynamic"
    assert final.steps["b"].status == "succeeded"
    assert final.steps["c"].status == "skipped"
    assert final.steps["d"].status == "skipped"
    assert (tmp_path / "b-ran").exists()
    assert not (tmp_path / "c-ran").exists()
    assert not (tmp_path / "d-ran").exists()


def test_twenty_runs_at_once_each_see_their_own_params(write_workflow):
    wf = write_workflow("""
name: many
params:
  n: "0"
steps:
  - id: one
    run: echo "n=${{ params.n }}" >> "$RUNBOOK_OUTPUT"
  - id: two
    needs: [one]
    env:
      N: ${{ steps.one.outputs.n }}
    run: |
      [[ $N =~ ^[0-9]+$ ]]
      echo "double=$(( N * 2 ))" >> "$RUNBOOK_OUTPUT"
""")
    runs: list = [None] * 20

    def fire(i: int) -> None:
        runs[i] = submit(wf, {"n": str(i)})

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.id for r in runs}) == 20
    for i, run in enumerate(runs):
        final = run.wait(timeout=120)
        assert final.status == "succeeded", final.to_dict()
        assert final.params == {"n": str(i)}
        assert final.steps["two"].outputs == {"double": str(2 * i)}


def test_editing_yaml_and_script_mid_run_changes_nothing(write_workflow, tmp_path, store):
    release = tmp_path / "release"
    script = tmp_path / "second.sh"
    script.write_text('echo "version=original-script" >> "$RUNBOOK_OUTPUT"\n')
    text = f"""
name: snapshot
steps:
  - id: first
    run: |
      while [ ! -e "{release}" ]; do sleep 0.02; done
      echo "version=original-run" >> "$RUNBOOK_OUTPUT"
  - id: second
    needs: [first]
    script: second.sh
"""
    wf = write_workflow(text)
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "first")
    wf.write_text(text.replace("original-run", "EDITED"))
    script.write_text('echo "version=EDITED" >> "$RUNBOOK_OUTPUT"\n')
    release.touch()
    final = run.wait(timeout=60)
    assert final.status == "succeeded"
    assert final.steps["first"].outputs == {"version": "original-run"}
    assert final.steps["second"].outputs == {"version": "original-script"}
    snapshot = store.snapshot(run.id)
    assert "original-script" in snapshot["steps"][1]["command"]
    assert len(final.sha256 or "") == 64


def test_cli_trigger_wait_json_reports_the_final_record_and_exit_code(write_workflow):
    ok = write_workflow(
        'name: ok\nsteps:\n  - id: s\n    run: echo "k=v" >> "$RUNBOOK_OUTPUT"\n', "ok.yaml"
    )
    bad = write_workflow("name: bad\nsteps:\n  - id: s\n    run: exit 4\n", "bad.yaml")
    res = run_cli("trigger", str(ok), "--wait", "--json")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert set(record) >= {"id", "workflow", "status", "params", "steps"}
    assert record["status"] == "succeeded"
    assert record["steps"]["s"]["outputs"] == {"k": "v"}
    assert set(record["steps"]["s"]) >= {
        "status",
        "exit_code",
        "started_at",
        "finished_at",
        "outputs",
    }
    res = run_cli("trigger", str(bad), "--wait")
    assert res.returncode == 1
    assert "failed" in res.stdout
    status = run_cli("status", res.stdout.splitlines()[0], "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["steps"]["s"]["exit_code"] == 4


def test_events_are_recorded_in_order_on_run_and_global_streams(store):
    run = submit(Path(__file__).parent.parent / "definitions" / "linear.yaml")
    run.wait(timeout=60)
    types = [e["type"] for _, e in store.events(run.id)]
    assert types[0] == "workflow_started"
    assert types[-1] == "workflow_succeeded"
    assert types.count("step_started") == 3 and types.count("step_succeeded") == 3
    global_ids = [e["run_id"] for _, e in store.events(None)]
    assert global_ids.count(run.id) == len(types)


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nsteps:\n  - id: a\n    run: [unclosed\n",
        "name: x\nsteps:\n  - id: a\n    run: echo\n    bogus: 1\n",
        "name: x\nsteps:\n  - id: a\n    needs: [a]\n    run: echo\n",
        "name: x\nsteps:\n  - id: a\n    needs: [b]\n    run: echo\n"
        "  - id: b\n    needs: [a]\n    run: echo\n",
        "name: x\nsteps:\n  - id: a\n    run: echo ${{ params.nope }}\n",
        "",
    ],
)
def test_trigger_rejects_bad_definitions_with_exit_2_and_enqueues_nothing(
    text, write_workflow, redis_client
):
    wf = write_workflow(text)
    runs_before = redis_client.zcard(f"{PREFIX}:runs")
    queued_before = redis_client.llen(QUEUE)
    res = run_cli("trigger", str(wf), "--wait")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert str(wf) in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stdout == ""
    assert redis_client.zcard(f"{PREFIX}:runs") == runs_before
    assert redis_client.llen(QUEUE) == queued_before


def test_trigger_rejects_unknown_params_with_exit_2(write_workflow, redis_client):
    wf = write_workflow("name: x\nparams: {a: 1}\nsteps:\n  - id: s\n    run: echo\n")
    runs_before = redis_client.zcard(f"{PREFIX}:runs")
    res = run_cli("trigger", str(wf), "-p", "b=2")
    assert res.returncode == 2
    assert "unknown param 'b'" in res.stderr
    assert redis_client.zcard(f"{PREFIX}:runs") == runs_before


def test_every_lease_index_entry_of_a_run_ends_with_its_step(write_workflow, tmp_path, store):
    # Given a canvas chain with a retried step and a failing last step, and a dynamic run
    counter = tmp_path / "tries"
    chain = write_workflow(
        f"""
name: leases-chain
steps:
  - id: a
    run: "true"
  - id: flaky
    needs: [a]
    retries: {{limit: 2, delay: 0}}
    run: |
      echo x >> {counter}
      [ "$(wc -l < {counter})" -ge 2 ]
  - id: last
    needs: [flaky]
    run: exit 3
""",
        name="chain.yaml",
    )
    dynamic = write_workflow(
        """
name: leases-dynamic
steps:
  - {id: a, run: "true"}
  - {id: b, run: "true"}
  - {id: c, needs: [a], run: "true"}
  - {id: d, needs: [a, b], run: "true"}
""",
        name="dynamic.yaml",
    )
    runs = [submit(chain), submit(dynamic)]

    # When the runs have ended and Celery has stored each step task's final result
    finals = [r.wait(timeout=60) for r in runs]
    assert [f.mode for f in finals] == ["canvas", "dynamic"]
    assert finals[0].status == "failed" and finals[1].status == "succeeded"
    from celery.result import AsyncResult

    from runbook_celery.engine.app import app

    for final in finals:
        for step in final.steps:
            AsyncResult(f"{final.id}.{step}", app=app).get(timeout=30, propagate=False)

    # Then no step of either run is still watched by the lease reconciler
    members = {m.decode() for m in store.r.zrange(store.keys.leases, 0, -1)}
    assert not {m for m in members if m.split("|")[0] in {f.id for f in finals}}
