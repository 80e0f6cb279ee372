"""Following a run warns when its pending steps wait on a queue that no worker consumes.

`trigger --wait` with no worker on the step's queue used to show an all-pending table
forever with no hint; now stderr names the queue after a few seconds, and the wait goes on.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import QUEUE, WorkerProcess, run_cli

from runbook_celery.cli.queuewatch import QueueWatch, warning_text

pytestmark = pytest.mark.timeout(120)
OTHER = f"{QUEUE}-other"


class FakeRun:
    """What QueueWatch reads of a run: its record and its snapshot's step queues."""

    id = "r1"

    def __init__(self, statuses: dict[str, str], queues: dict[str, str | None]) -> None:
        self.statuses = statuses
        steps = [{"id": sid, "queue": q} for sid, q in queues.items()]
        self.store = SimpleNamespace(snapshot=lambda _run_id: {"steps": steps})
        self.settings = SimpleNamespace(default_queue="runbook")

    def status(self) -> Any:
        steps = {sid: SimpleNamespace(status=st) for sid, st in self.statuses.items()}
        return SimpleNamespace(steps=steps)


def _look(run: FakeRun, consumed: set[str] | None) -> list[str]:
    said: list[str] = []
    watch = QueueWatch(run, said.append, consumed=lambda: consumed)  # type: ignore[arg-type]
    watch.look()
    watch.look()  # once per queue
    return said


def test_a_pending_step_on_a_queue_nobody_consumes_is_named_once():
    run = FakeRun({"a": "succeeded", "b": "pending"}, {"a": None, "b": "gpu"})
    assert _look(run, {"runbook"}) == [warning_text("gpu", ["b"])]
    assert "runbook-celery worker -Q gpu" in warning_text("gpu", ["b"])


def test_the_default_queue_counts_for_steps_without_a_queue():
    run = FakeRun({"a": "pending", "b[0]": "pending"}, {"a": None, "b": None})
    assert _look(run, set()) == [warning_text("runbook", ["a", "b[0]"])]
    assert _look(run, {"runbook"}) == []


def test_no_warning_without_pending_steps_or_when_workers_cannot_be_asked():
    assert _look(FakeRun({"a": "running"}, {"a": "gpu"}), set()) == []
    assert _look(FakeRun({"a": "pending"}, {"a": "gpu"}), None) == []


# ------------------------------------------------------------------ real worker, real Redis


@pytest.fixture
def other_worker(redis_client):  # type: ignore[no-untyped-def]
    """A real worker of our app, but on another queue than the steps'."""
    w = WorkerProcess("other", queues=OTHER, concurrency=2)
    yield w
    w.stop()


def _workflow(tmp_path: Path, queue: str, sleep: float = 0) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(
        "name: queued\n"
        "steps:\n"
        f"  - id: a\n    queue: {queue}\n    run: sleep {sleep}\n"
        f"  - id: b\n    needs: [a]\n    queue: {queue}\n    run: echo b\n"
    )
    return path


@pytest.mark.slow
def test_trigger_wait_warns_when_only_a_worker_on_another_queue_answers(other_worker, tmp_path):
    queue = f"{QUEUE}-nobody-{uuid.uuid4().hex[:8]}"  # deleted with the session's keys
    started = time.monotonic()
    out = run_cli("trigger", str(_workflow(tmp_path, queue)), "--wait", "--timeout", "10")
    assert out.returncode == 5, out.stderr  # the wait went on until its own timeout
    assert time.monotonic() - started >= 10
    warning = warning_text(queue, ["a", "b"])
    assert out.stderr.count(warning) == 1, out.stderr


@pytest.mark.slow
def test_trigger_json_watch_and_rerun_warn_too(other_worker, tmp_path):
    queue = f"{QUEUE}-nobody-{uuid.uuid4().hex[:8]}"  # deleted with the session's keys
    out = run_cli("trigger", str(_workflow(tmp_path, queue)), "--wait", "--json", "--timeout", "7")
    assert out.returncode == 5 and warning_text(queue, ["a", "b"]) in out.stderr
    first = run_cli("trigger", str(_workflow(tmp_path, queue))).stdout.strip()
    watched = run_cli("watch", first, "--timeout", "7")
    assert watched.returncode == 5 and warning_text(queue, ["a", "b"]) in watched.stderr
    assert run_cli("cancel", first).returncode == 0  # a rerun starts from an ended run
    rerun = run_cli("rerun", first, "--wait", "--timeout", "7")
    assert rerun.returncode == 5 and warning_text(queue, ["a", "b"]) in rerun.stderr


@pytest.mark.slow
def test_no_warning_while_steps_wait_on_a_queue_a_worker_consumes(other_worker, tmp_path):
    # b is pending for the 7 s a runs, on a queue the worker consumes: nothing to warn of
    out = run_cli("trigger", str(_workflow(tmp_path, OTHER, sleep=7)), "--wait")
    assert out.returncode == 0, out.stderr
    assert "no worker consumes" not in out.stderr
