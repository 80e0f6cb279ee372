"""`runbook-celery logs`: stored and live step output, on a real worker and Redis."""

from __future__ import annotations

import pytest
from conftest import run_cli, wait_for_event
from observe_helpers import LiveProcess

from runbook_celery import submit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker"), pytest.mark.timeout(90)]


def test_logs_follow_shows_a_running_steps_line_before_the_step_ends(
    write_workflow, tmp_path, store
):
    # Given a step that prints a line, then waits until the test lets it finish
    release = tmp_path / "release"
    wf = write_workflow(f"""
name: chatty
steps:
  - id: talk
    run: |
      echo "first line from talk"
      while [ ! -e "{release}" ]; do sleep 0.02; done
      echo "last line from talk"
""")
    run = submit(wf)
    follower = LiveProcess("logs", run.id, "--follow")
    try:
        # When the line has been printed
        follower.wait_for_line(lambda line: line == "first line from talk")
        # Then logs --follow showed it while the step is still running
        assert run.status().steps["talk"].status == "running"
        release.touch()
        code, lines, stderr = follower.finish()
    finally:
        follower.close()
    # and it streams to the end and exits with the run's outcome (0: succeeded)
    assert code == 0, stderr
    assert lines == ["first line from talk", "last line from talk"]


def test_logs_follow_exits_1_when_the_run_fails(write_workflow):
    wf = write_workflow("""
name: failing-logs
steps:
  - id: boom
    run: |
      echo "about to fail"
      exit 3
""")
    run = submit(wf)
    res = run_cli("logs", run.id, "--follow")
    assert res.returncode == 1, res.stderr
    assert res.stdout.splitlines() == ["about to fail"]


def test_logs_of_a_finished_run_prefix_lines_by_step_and_keep_stderr_apart(write_workflow):
    wf = write_workflow("""
name: two-steps
steps:
  - id: first
    run: |
      echo "out of first"
      echo "err of first" >&2
  - id: second
    needs: [first]
    run: echo "out of second"
""")
    run = submit(wf)
    assert run.wait(timeout=60).status == "succeeded"

    every = run_cli("logs", run.id)
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == ["first  | out of first", "second | out of second"]
    assert every.stderr.splitlines() == ["first  | err of first"]

    one = run_cli("logs", run.id, "second")
    assert (one.returncode, one.stdout, one.stderr) == (0, "out of second\n", "")


def test_logs_say_how_many_lines_the_cap_dropped(write_workflow):
    # Given a step printing 50 lines more than the default cap of 10,000 per step
    wf = write_workflow("""
name: flood
steps:
  - id: flood
    run: seq 1 10050
""")
    run = submit(wf)
    assert run.wait(timeout=60).status == "succeeded"
    res = run_cli("logs", run.id)
    # Then the last 10,000 lines are shown and the 50 dropped ones are reported
    lines = res.stdout.splitlines()
    assert res.returncode == 0
    assert len(lines) == 10_000
    assert (lines[0], lines[-1]) == ("51", "10050")
    # ("1\n" to "50\n": 9 x 2 + 41 x 3 bytes)
    assert "[flood: 50 lines (141 bytes) not shown" in res.stderr
    assert "RUNBOOK_LOG_LINES" in res.stderr


def test_logs_of_unknown_run_or_step_are_refused(write_workflow, store):
    missing = run_cli("logs", "no-such-run")
    assert missing.returncode == 4
    assert "not found" in missing.stderr

    wf = write_workflow("name: one\nsteps:\n  - id: only\n    run: 'true'\n")
    run = submit(wf)
    wait_for_event(store, run.id, "workflow_succeeded")
    bad_step = run_cli("logs", run.id, "nope")
    assert bad_step.returncode == 2
    assert "has no step 'nope'" in bad_step.stderr


def test_logs_of_a_fanned_out_step_show_each_instance(write_workflow):
    wf = write_workflow("""
name: fanned
steps:
  - id: fan
    matrix:
      n: [1, 2]
    run: echo "n=${{ matrix.n }}"
""")
    run = submit(wf)
    # Following from the start sees instances that appear while the run goes on
    followed = run_cli("logs", run.id, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert sorted(followed.stdout.splitlines()) == ["fan[0] | n=1", "fan[1] | n=2"]
    # and asking for the step shows its instances; asking for one instance shows just it
    parent = run_cli("logs", run.id, "fan")
    assert sorted(parent.stdout.splitlines()) == ["fan[0] | n=1", "fan[1] | n=2"]
    one = run_cli("logs", run.id, "fan[1]")
    assert (one.returncode, one.stdout) == (0, "n=2\n")
