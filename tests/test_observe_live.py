"""Live progress: `trigger --wait` and `watch`, in a terminal and in CI logs."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_cli, wait_for_event

from runbook_celery import submit
from runbook_celery.cli.live import RunView, event_line
from runbook_celery.plan.runrecord import RunRecord, StepRecord
from runbook_celery.store import events

FAILING = """
name: {name}
steps:
  - id: prepare
    run: echo ready
  - id: break
    needs: [prepare]
    run: |
      echo "something broke" >&2
      exit 3
  - id: after
    needs: [break]
    run: echo never
"""


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(90)
def test_wait_outside_a_terminal_prints_one_plain_line_per_event(write_workflow):
    # Given stdout is a pipe (as in CI)
    res = run_cli("trigger", str(write_workflow(FAILING.format(name="ci-lines"))), "--wait")
    assert res.returncode == 1, res.stderr
    out = res.stdout.splitlines()
    run_id = out[0]
    stored = list(events.read(run_id))
    # Then after the run id there is exactly one line per stored event, in order,
    assert out[1 : 1 + len(stored)] == [event_line(e) for e in stored]
    assert stored[-1].type == "workflow_failed"
    # with no terminal control codes, then the final table with the failed step's stderr
    assert "\x1b" not in res.stdout
    rest = "\n".join(out[1 + len(stored) :])
    assert f"run       {run_id}" in rest
    assert "step break failed" in rest
    assert "  | something broke" in rest


def _run_in_pty(args: list[str], until: bytes, then, timeout: float = 60) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """Run the CLI with a pseudo-terminal as stdout; call ``then()`` once ``until`` shows."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbook_celery", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
    )
    os.close(slave)
    out = b""
    triggered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal: it has exited
                    break
                if not chunk:
                    break
                out += chunk
                if not triggered and until in out:
                    triggered = True
                    then()
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(90)
def test_watch_in_a_terminal_redraws_the_step_table_in_place(write_workflow, tmp_path, store):
    # Given a run whose second step waits until the test releases it
    release = tmp_path / "release"
    wf = write_workflow(f"""
name: live-table
steps:
  - id: quick
    run: echo quick
  - id: slow
    needs: [quick]
    run: |
      while [ ! -e "{release}" ]; do sleep 0.02; done
      echo "slow went wrong" >&2
      exit 2
""")
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "slow")
    # When watching it in a terminal, and the step fails once the table shows it running
    code, raw = _run_in_pty(["watch", run.id], until=b"running", then=release.touch)
    out = raw.decode("utf-8", "replace")
    # Then the table was redrawn in place (cursor moves up over the previous frame)
    assert "\x1b[" in out
    assert "\x1b[1A" in out or "\x1b[2K" in out
    assert "quick" in out and "slow" in out and "succeeded" in out
    # and the final record ends with the failed step's stderr tail; exit code 1 (failed)
    assert code == 1
    assert "step slow failed" in out
    assert "slow went wrong" in out.rsplit("step slow failed", 1)[1]


def test_the_live_view_shows_status_attempt_duration_and_the_failed_stderr_tail():
    from rich.console import Console

    record = RunRecord(
        id="r1",
        workflow="wf",
        status="running",
        params={},
        created_at="2026-01-01T00:00:00.000Z",
        started_at="2026-01-01T00:00:00.000Z",
        steps={
            "build": StepRecord(
                "succeeded",
                exit_code=0,
                attempts=1,
                started_at="2026-01-01T00:00:00.000Z",
                finished_at="2026-01-01T00:00:01.500Z",
            ),
            "test": StepRecord(
                "failed",
                exit_code=4,
                attempts=2,
                reason="exit_code",
                started_at="2026-01-01T00:00:01.500Z",
                finished_at="2026-01-01T00:00:03.000Z",
                stderr_tail=["line one", "assertion failed: 1 != 2"],
            ),
            "deploy": StepRecord("pending"),
        },
    )
    console = Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)
    console.print(RunView(record))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    # the final table's columns in its order: STEP STATUS EXIT TRIES DURATION
    assert rows["STEP"] == ["STEP", "STATUS", "EXIT", "TRIES", "DURATION"]
    assert rows["build"][1:] == ["✔", "succeeded", "0", "1", "1.50s"]
    assert rows["test"][1:] == ["✘", "failed", "4", "2", "1.50s"]
    assert rows["deploy"][1:] == ["·", "pending", "-", "-", "-"]
    assert "test failed: exit 4, exit_code" in text
    assert "assertion failed: 1 != 2" in text
