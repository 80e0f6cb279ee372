"""The CLI's views of real runs: rerun --json, reused steps, logs filters, signals.

A real Celery worker on real Redis runs the steps; every command is the real console script.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker"), pytest.mark.timeout(120)]
ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def fails_once(write_workflow, tmp_path):  # type: ignore[no-untyped-def]
    """A finished run whose second step failed; it succeeds once ``fixed`` exists."""
    fixed = tmp_path / "fixed"
    wf = write_workflow(f"""
name: fails-once
params:
  env: prod
steps:
  - id: build
    run: echo built
  - id: deploy
    needs: [build]
    run: |
      echo deploying
      if [ ! -e "{fixed}" ]; then echo "not fixed yet" >&2; exit 3; fi
      echo deployed
""")
    record = submit(wf).wait(timeout=60)
    assert record.status == "failed"
    return record.id, fixed


def test_rerun_wait_json_prints_the_new_runs_record_as_status_json_does(fails_once):
    run_id, fixed = fails_once
    fixed.touch()
    res = run_cli("rerun", "--from-failed", "--wait", "--json", run_id[:8])
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)  # the record alone: no run id line, no event lines
    assert record["status"] == "succeeded"
    assert record["rerun_of"] == run_id
    assert record["steps"]["build"]["reused"] is True
    assert record["steps"]["deploy"]["reused"] is False
    status = run_cli("status", "--json", record["id"])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout).keys() == record.keys()
    assert json.loads(status.stdout)["steps"]["build"].keys() == record["steps"]["build"].keys()


def test_rerun_wait_json_exits_1_when_the_new_run_fails(fails_once):
    run_id, _fixed = fails_once
    res = run_cli("rerun", "--from-failed", "--wait", "--json", run_id)
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["status"] == "failed"


def test_reused_steps_are_marked_in_status_watch_and_runs(fails_once):
    run_id, fixed = fails_once
    fixed.touch()
    res = run_cli("rerun", "--from-failed", "--wait", run_id)
    assert res.returncode == 0, res.stderr
    new_id = res.stdout.splitlines()[0]
    status = run_cli("status", new_id)
    watch = run_cli("watch", new_id)
    runs = run_cli("runs", "--workflow", "fails-once")
    assert status.returncode == watch.returncode == runs.returncode == 0
    for out in (status.stdout, watch.stdout, res.stdout):
        build = next(line for line in out.splitlines() if line.startswith("build "))
        assert build.split()[1:3] == ["succeeded", "(reused)"], out
        deploy = next(line for line in out.splitlines() if line.startswith("deploy "))
        assert "reused" not in deploy
    assert f"rerun of  {run_id} (1 reused)" in status.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in runs.stdout.splitlines()[1:]}
    assert rows[new_id][2:4] == ["succeeded", "(rerun)"]
    assert rows[run_id][2] == "failed"
    assert "(rerun)" not in " ".join(rows[run_id])


def test_logs_timestamps_starts_each_line_with_the_time_it_was_stored(fails_once):
    run_id, _fixed = fails_once
    record = json.loads(run_cli("status", "--json", run_id).stdout)
    res = run_cli("logs", "--timestamps", run_id)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "build  | built",
        "deploy | deploying",
    ]
    started, finished = record["created_at"], record["finished_at"]
    for line in lines + res.stderr.splitlines():
        stamp = line.split(" ", 1)[0]
        assert re.fullmatch(ISO_MS, stamp), line
        assert started <= stamp <= finished


def test_logs_failed_shows_only_the_steps_that_failed(fails_once):
    run_id, _fixed = fails_once
    res = run_cli("logs", "--failed", run_id)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["deploying"]
    assert res.stderr.splitlines() == ["not fixed yet"]


def test_logs_failed_of_a_fanned_out_step_shows_only_its_failed_instances(write_workflow):
    wf = write_workflow("""
name: fan
steps:
  - id: t
    matrix: {n: [1, 2, 3]}
    run: |
      echo "n=${{ matrix.n }}"
      [ "${{ matrix.n }}" != 2 ]
""")
    run = submit(wf)
    assert run.wait(timeout=60).status == "failed"
    every = run_cli("logs", run.id)
    failed = run_cli("logs", "--failed", run.id)
    assert every.returncode == failed.returncode == 0, every.stderr + failed.stderr
    assert sorted(every.stdout.splitlines()) == ["t[0] | n=1", "t[1] | n=2", "t[2] | n=3"]
    assert failed.stdout.splitlines() == ["n=2"]


def test_logs_failed_of_a_run_with_no_failed_step_says_so(write_workflow):
    run = submit(write_workflow("name: fine\nsteps:\n  - id: a\n    run: echo fine\n"))
    assert run.wait(timeout=60).status == "succeeded"
    res = run_cli("logs", "--failed", run.id)
    assert res.returncode == 0
    assert res.stdout == ""
    assert res.stderr.strip() == f"no step of run {run.id} failed"


def test_logs_failed_and_follow_together_exit_2(fails_once):
    run_id, _fixed = fails_once
    res = run_cli("logs", "--failed", "--follow", run_id)
    assert res.returncode == 2
    assert "use one of them" in res.stderr


def test_logs_json_gives_each_line_its_step_stream_and_time(fails_once):
    run_id, _fixed = fails_once
    res = run_cli("logs", "--json", run_id, "deploy")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(x["step"], x["stream"], x["text"]) for x in lines] == [
        ("deploy", "out", "deploying"),
        ("deploy", "err", "not fixed yet"),
    ]
    assert all(re.fullmatch(ISO_MS, x["ts"]) for x in lines)


SIGNALLED = """
name: signalled
steps:
  - id: killed
    timeout: 1
    run: sleep 30
  - id: trapped
    timeout: 1
    run: trap 'exit 143' TERM; sleep 30 & wait
"""


def test_sigterm_shows_as_143_sigterm_in_every_view_however_it_was_recorded(write_workflow, store):
    run = submit(write_workflow(SIGNALLED))
    assert run.wait(timeout=60).status == "failed"
    # bash itself killed: -15; bash exiting on the trap: 143 (the same SIGTERM)
    recorded = {
        sid: store.r.hget(store.keys.step(run.id, sid), "exit_code").decode()
        for sid in ("killed", "trapped")
    }
    assert recorded == {"killed": "-15", "trapped": "143"}
    status = run_cli("status", run.id)
    as_json = json.loads(run_cli("status", "--json", run.id).stdout)
    events = run_cli("events", "--run", run.id, "--type", "step_failed")
    events_json = run_cli("events", "--run", run.id, "--type", "step_failed", "--json")
    watch = run_cli("watch", run.id)
    for sid in ("killed", "trapped"):
        row = next(line for line in status.stdout.splitlines() if line.startswith(f"{sid} "))
        assert "143 (SIGTERM)" in row
        assert as_json["steps"][sid]["exit_code"] == 143
        assert as_json["steps"][sid]["signal"] == "SIGTERM"
        assert f"step {sid} failed: reason=timeout exit_code=143 (SIGTERM)" in watch.stdout
    assert events.stdout.count("exit_code=143 signal=SIGTERM") == 2
    assert [json.loads(x)["exit_code"] for x in events_json.stdout.splitlines()] == [143, 143]
    assert "-15" not in status.stdout + events.stdout + watch.stdout + json.dumps(as_json)
    assert watch.returncode == 1


def test_watch_json_prints_the_final_record_and_exits_with_the_outcome(fails_once):
    run_id, _fixed = fails_once
    res = run_cli("watch", "--json", run_id[:6])
    assert res.returncode == 1, res.stderr
    record = json.loads(res.stdout)
    assert record["id"] == run_id and record["status"] == "failed"
