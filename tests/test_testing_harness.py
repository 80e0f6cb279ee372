"""runbook_celery.testing: workflows run in-process, no Redis server and no worker, with
the engine's own store scripts (on fakeredis) and step task code, Bash really executed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runbook_celery import InvalidDefinition, InvalidParams, Step, Workflow
from runbook_celery.store.events import FailureReason, RunStatus, StepStatus
from runbook_celery.testing import RunResult, run_workflow

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = sorted((ROOT / "definitions").glob("*.yaml"))
# what each example is expected to end as (a new example needs an entry here)
EXPECTED = {
    "build-and-deploy.yaml": "succeeded",
    "cpython-build.yaml": "succeeded",
    "diamond.yaml": "succeeded",
    "fanout.yaml": "succeeded",
    "linear.yaml": "succeeded",
    "pydantic-ci.yaml": "succeeded",
    "release-with-cleanup.yaml": "succeeded",
}


def test_every_example_definition_is_expected():
    assert {p.name for p in DEFINITIONS} == set(EXPECTED) and len(DEFINITIONS) >= 5


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_each_example_definition_runs_in_process(path: Path):
    result = run_workflow(path)
    # the time is reported, not asserted (a loaded machine is slower)
    print(f"{path.name}: {result.status} in {result.seconds:.3f}s")
    assert result.status == EXPECTED[path.name], result.record.to_dict()
    assert result.finished
    assert all(s.status.terminal for s in result.steps.values())
    assert result.events[-1].type == f"workflow_{EXPECTED[path.name]}"


def test_outputs_flow_and_steps_print_into_their_logs():
    result = run_workflow(ROOT / "definitions/diamond.yaml", {"greeting": "hi"})
    assert result.steps["top"].outputs == {"message": "hi from top"}
    assert result.steps["bottom"].outputs == {"summary": "left:hi from top + right:hi from top"}
    assert result.log("left") == "left saw: hi from top\n"
    assert [e.type for e in result.events].count("step_succeeded") == 4


def test_a_failure_skips_dependents_runs_cleanup_and_fails_the_run():
    result = run_workflow(
        {
            "name": "t-fail",
            "outputs": {"where": "${{ steps.build.status }}"},
            "steps": [
                {"id": "build", "run": "echo compiling; echo oops >&2; exit 4"},
                {"id": "deploy", "needs": ["build"], "run": "echo never"},
                {"id": "cleanup", "needs": ["deploy"], "if": "failure()", "run": "echo clean"},
            ],
        }
    )
    assert result.status == RunStatus.FAILED
    build = result.steps["build"]
    assert (build.status, build.exit_code, build.reason) == (
        StepStatus.FAILED,
        4,
        FailureReason.EXIT_CODE,
    )
    assert build.stderr_tail == ["oops"]
    assert result.steps["deploy"].status == "skipped"
    assert result.steps["cleanup"].status == "succeeded"
    assert result.log("cleanup") == "clean\n"
    assert result.outputs == {"where": "failed"}


def test_retry_delays_are_waited_for_when_asked(tmp_path: Path):
    marker = tmp_path / "tries"
    result = run_workflow(
        {
            "name": "t-delay",
            "steps": [
                {
                    "id": "flaky",
                    "retries": {"limit": 1, "delay": 1},
                    "run": f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 2 ]",
                }
            ],
        },
        retry_delays=True,
    )
    assert result.succeeded and result.steps["flaky"].attempts == 2
    assert result.seconds >= 1


def test_retries_are_taken_at_once_and_counted(tmp_path: Path):
    marker = tmp_path / "tries"
    result = run_workflow(
        {
            "name": "t-retry",
            "steps": [
                {
                    "id": "flaky",
                    "retries": {"limit": 3, "delay": 30},
                    "run": f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 3 ]",
                }
            ],
        }
    )
    assert result.succeeded
    assert result.steps["flaky"].attempts == 3
    assert result.seconds < 30  # the 30 s delay was not waited for
    assert [e.type for e in result.events].count("step_retrying") == 2


def test_fan_out_continue_on_error_and_a_step_timeout():
    result = run_workflow(
        Workflow(
            name="t-mix",
            steps=[
                Step(id="list", run="""echo 'items=["a","b","c"]' >> "$RUNBOOK_OUTPUT" """),
                Step(
                    id="each",
                    needs=["list"],
                    for_each="${{ fromJSON(steps.list.outputs.items) }}",
                    run='echo "out=${{ item }}" >> "$RUNBOOK_OUTPUT"',
                ),
                Step(id="slow", run="sleep 10", timeout=0.3, continue_on_error=True),
            ],
        )
    )
    assert result.succeeded, result.record.to_dict()
    assert [o["out"] for o in result.steps["each"].outputs] == ["a", "b", "c"]
    slow = result.steps["slow"]
    assert slow.status == "failed" and slow.reason == FailureReason.TIMEOUT
    assert slow.allowed_failure


def test_an_approval_gate_ends_the_call_with_the_run_open():
    result = run_workflow(
        {
            "name": "t-gate",
            "steps": [
                {"id": "ask", "approval": {"prompt": "go?", "timeout": 300}, "run": "echo go"},
            ],
        }
    )
    assert result.seconds < 60  # its approval timeout is not waited for
    assert not result.finished
    assert result.steps["ask"].status == StepStatus.AWAITING_APPROVAL


def test_invalid_input_raises_as_submit_does():
    with pytest.raises(InvalidDefinition, match=r"steps\[0\]\.needs"):
        run_workflow({"name": "t-bad", "steps": [{"id": "a", "run": "true", "needs": ["x"]}]})
    with pytest.raises(InvalidParams):
        run_workflow(ROOT / "definitions/diamond.yaml", {"nope": "1"})


def test_the_runbook_fixture_works_in_a_users_project_with_no_redis_at_all(tmp_path: Path):
    """A user's test file, run by pytest with the plugin the package registers, while
    every Redis and broker URL points at a port nobody listens on."""
    (tmp_path / "wf.yaml").write_text(
        textwrap.dedent(
            """\
            name: user-wf
            params: {who: world}
            steps:
              - id: greet
                run: echo "hello ${{ params.who }}" && echo "said=yes" >> "$RUNBOOK_OUTPUT"
              - id: check
                needs: [greet]
                run: '[ "${{ steps.greet.outputs.said }}" = yes ]'
            """
        )
    )
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            def test_greets(runbook):
                result = runbook.run(Path(__file__).parent / "wf.yaml", {"who": "ci"})
                assert result.status == "succeeded"
                assert result.log("greet") == "hello ci\\n"
                assert result.steps["check"].status == "succeeded"
            """
        )
    )
    nowhere = "redis://127.0.0.1:1/0"
    env = {
        **os.environ,
        "RUNBOOK_REDIS_URL": nowhere,
        "RUNBOOK_BROKER_URL": nowhere,
        "PYTEST_ADDOPTS": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_results_are_plain_data_once_the_call_returns():
    result = run_workflow({"name": "t-data", "steps": [{"id": "a", "run": "echo A"}]})
    assert isinstance(result, RunResult)
    assert result.record.to_dict()["steps"]["a"]["status"] == "succeeded"
    assert result.logs.text() == "A\n"


def test_a_step_longer_than_its_lease_keeps_it_in_process(monkeypatch):
    """The lease keeper renews on the in-memory Redis: a step outliving its lease is
    neither fenced nor run twice."""
    monkeypatch.setenv("RUNBOOK_LEASE_SECONDS", "3")
    result = run_workflow({"name": "t-lease", "steps": [{"id": "long", "run": "sleep 4.5"}]})
    step = result.steps["long"]
    assert (step.status, step.attempts, step.exit_code) == ("succeeded", 1, 0)
    assert [e.type for e in result.events].count("step_started") == 1
