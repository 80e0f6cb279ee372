"""The engine's core scenarios on both brokers: Redis, and RabbitMQ chosen by URL alone.

Redis always holds results and run state; only ``RUNBOOK_BROKER_URL`` changes. The test
process's Celery app is configured from the environment at import (Redis), so each broker
is driven through subprocesses: a worker on its own queue and the real CLI, both started
with that broker's URL. The same code path runs for both, so a difference is the broker's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import QUEUE, TEST_REDIS_URL, WorkerProcess, run_cli, wait_for_event

from runbook_celery.client.run import Run

pytestmark = pytest.mark.slow

AMQP_URL = os.environ.get("RUNBOOK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
DIAMOND = Path(__file__).resolve().parent.parent / "definitions" / "diamond.yaml"
RUN_TIMEOUT = 60


def _amqp_answers(url: str) -> str | None:
    """None if RabbitMQ accepts a TCP connection at ``url``, else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return None
    except OSError as exc:
        return str(exc)


class AmqpWorker(WorkerProcess):
    """A worker whose broker is RabbitMQ: readiness is pinged over RabbitMQ, not Redis."""

    def _wait_ready(self, timeout: float = 60) -> None:
        from celery import Celery

        probe = Celery("probe", broker=AMQP_URL, set_as_current=False)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited early: {self.log_path.read_text()[-3000:]}")
                if probe.control.ping(destination=[self.name], timeout=0.5):
                    return
        finally:
            probe.close()
        raise RuntimeError(f"worker not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")


@dataclass
class Broker:
    """One broker under test: its worker, and the environment the CLI runs with."""

    name: str
    env: dict[str, str] = field(default_factory=dict)

    def trigger(self, file: Path, *params: str) -> tuple[int, dict[str, Any]]:
        """``trigger FILE --wait --json`` through this broker: exit code and final record."""
        args = [a for p in params for a in ("-p", p)]
        res = run_cli(
            "trigger", str(file), *args, "--wait", "--json", env=self.env, timeout=RUN_TIMEOUT
        )
        assert res.stdout, res.stderr
        return res.returncode, json.loads(res.stdout)

    def start(self, file: Path) -> str:
        """``trigger FILE`` (no wait): the run id."""
        res = run_cli("trigger", str(file), env=self.env)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()


def _delete_amqp_queue(name: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=3) as conn:
        conn.default_channel.queue_delete(name)


@pytest.fixture(scope="module", params=["redis", "amqp"])
def broker(request, redis_client) -> Iterator[Broker]:  # type: ignore[no-untyped-def]
    name = request.param
    queue = f"{QUEUE}-{name}"
    env = {"RUNBOOK_QUEUE": queue, "RB_TEST_BROKER": name}
    if name == "amqp":
        why = _amqp_answers(AMQP_URL)
        if why is not None:
            message = f"RabbitMQ at {AMQP_URL} does not answer: {why}"
            if os.environ.get("CI"):
                pytest.fail(f"{message} (run scripts/ensure_rabbitmq.sh)")
            pytest.skip(message)
        env["RUNBOOK_BROKER_URL"] = AMQP_URL
        worker: WorkerProcess = AmqpWorker(f"broker-{name}", queues=queue, env=env)
    else:
        env["RUNBOOK_BROKER_URL"] = TEST_REDIS_URL
        worker = WorkerProcess(f"broker-{name}", queues=queue, env=env)
    try:
        yield Broker(name, env)
    finally:
        worker.stop()
        if name == "amqp":
            _delete_amqp_queue(queue)


def test_diamond_canvas_passes_outputs_through_both_branches(broker: Broker):
    code, record = broker.trigger(DIAMOND, "greeting=hi")
    assert code == 0, record
    assert record["mode"] == "canvas"
    steps = record["steps"]
    assert steps["left"]["outputs"] == {"value": "left:hi from top"}
    assert steps["right"]["outputs"] == {"value": "right:hi from top"}
    assert steps["bottom"]["outputs"] == {"summary": "left:hi from top + right:hi from top"}


def test_n_shaped_dag_is_dispatched_dynamically_on_this_broker(broker: Broker, write_workflow):
    # Given a->c, a->d, b->d (no exact canvas), each step saying which broker's worker ran it
    wf = write_workflow("""
name: n-shape-broker
steps:
  - id: a
    run: echo "from=a-$RB_TEST_BROKER" >> "$RUNBOOK_OUTPUT"
  - id: b
    run: echo "from=b-$RB_TEST_BROKER" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [a]
    run: echo "saw=${{ steps.a.outputs.from }}" >> "$RUNBOOK_OUTPUT"
  - id: d
    needs: [a, b]
    run: echo "got=${{ steps.a.outputs.from }}+${{ steps.b.outputs.from }}" >> "$RUNBOOK_OUTPUT"
""")
    code, record = broker.trigger(wf)
    assert code == 0, record
    assert record["mode"] == "dynamic"
    b = broker.name
    assert record["steps"]["c"]["outputs"] == {"saw": f"a-{b}"}
    assert record["steps"]["d"]["outputs"] == {"got": f"a-{b}+b-{b}"}
    assert record["steps"]["d"]["started_at"] >= record["steps"]["b"]["finished_at"]


def test_failing_step_fails_the_run_and_skips_what_follows(
    broker: Broker, write_workflow, tmp_path
):
    wf = write_workflow(f"""
name: fails-broker
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
""")
    code, record = broker.trigger(wf)
    assert code == 1
    steps = record["steps"]
    assert record["status"] == "failed"
    assert steps["boom"]["status"] == "failed"
    assert steps["boom"]["exit_code"] == 7
    assert "about to fail" in steps["boom"]["stderr_tail"]
    assert steps["after"]["status"] == "skipped"
    assert not (tmp_path / "after-ran").exists()


def test_flaky_step_is_retried_with_countdown_until_it_succeeds(
    broker: Broker, write_workflow, tmp_path
):
    counter = tmp_path / "count"
    wf = write_workflow(f"""
name: flaky-broker
steps:
  - id: flaky
    retries: {{limit: 3, delay: 0.2, backoff: 2}}
    run: |
      n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 ))
      echo $n > {counter}
      [ "$n" -ge 3 ]
      echo "tries=$n" >> "$RUNBOOK_OUTPUT"
  - id: after
    needs: [flaky]
    run: echo "saw=${{{{ steps.flaky.outputs.tries }}}}" >> "$RUNBOOK_OUTPUT"
""")
    code, record = broker.trigger(wf)
    assert code == 0, record
    flaky = record["steps"]["flaky"]
    assert flaky["attempts"] == 3
    assert [h["exit_code"] for h in flaky["history"]] == [1, 1, 0]
    assert record["steps"]["after"]["outputs"] == {"saw": "3"}


def test_cancel_stops_a_running_step(broker: Broker, write_workflow, tmp_path, store):
    pid_file = tmp_path / "pid"
    wf = write_workflow(f"""
name: long-broker
steps:
  - id: long
    run: |
      sleep 300 &
      echo $! > {pid_file}
      wait
  - id: never
    needs: [long]
    run: touch {tmp_path}/never
""")
    run_id = broker.start(wf)
    wait_for_event(store, run_id, "step_started", "long")
    res = run_cli("cancel", run_id, env=broker.env)
    assert res.returncode == 0, res.stderr
    final = Run(run_id).wait(timeout=RUN_TIMEOUT)
    assert final.status == "cancelled"
    assert final.steps["long"].status == "cancelled"
    assert final.steps["never"].status == "cancelled"
    assert not (tmp_path / "never").exists()
    assert not _alive(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "zombie" not in fh.read()
    except FileNotFoundError:
        return False


def test_matrix_fans_out_and_joins_through_a_chord(broker: Broker, write_workflow):
    wf = write_workflow("""
name: matrix-broker
steps:
  - id: test
    matrix: {py: ["3.11", "3.12"], os: [a, b]}
    max_parallel: 2
    run: echo "name=${{ matrix.py }}-${{ matrix.os }}" >> "$RUNBOOK_OUTPUT"
  - id: report
    needs: [test]
    run: echo "all=${{ steps.test.outputs.name }}" >> "$RUNBOOK_OUTPUT"
""")
    code, record = broker.trigger(wf)
    assert code == 0, record
    instances = sorted(s for s in record["steps"] if s.startswith("test["))
    assert len(instances) == 4
    assert record["steps"]["report"]["outputs"] == {"all": '["3.11-a","3.11-b","3.12-a","3.12-b"]'}


def test_a_more_urgent_step_overtakes_steps_already_queued(
    broker: Broker, request, write_workflow, tmp_path, store
):
    # Given a one-slot worker busy with a step that waits for the test
    queue = f"{QUEUE}-{broker.name}-prio"
    env = {**broker.env, "RUNBOOK_QUEUE": queue}
    kind = AmqpWorker if broker.name == "amqp" else WorkerProcess
    worker = kind(f"prio-{broker.name}", queues=queue, concurrency=1, env=env)
    release = tmp_path / "release"
    block = write_workflow(
        f"name: block\nsteps:\n  - id: s\n    run: while [ ! -e {release} ]; do sleep 0.02; done\n",
        "block.yaml",
    )
    low, high = (
        write_workflow(
            f"name: {name}\nsteps:\n  - id: s\n    priority: {level}\n    run: 'true'\n",
            f"{name}.yaml",
        )
        for name, level in (("low", 1), ("high", 9))
    )
    try:
        blocker = Broker(broker.name, env).start(block)
        wait_for_event(store, blocker, "step_started", "s")
        # When three low-priority runs are queued, then a high-priority one, and the slot frees
        queued = [Broker(broker.name, env).start(low) for _ in range(3)]
        urgent = Broker(broker.name, env).start(high)
        release.touch()
        records = {rid: Run(rid).wait(timeout=RUN_TIMEOUT) for rid in [blocker, *queued, urgent]}
    finally:
        worker.stop()
        if broker.name == "amqp":
            _delete_amqp_queue(queue)
    # Then the urgent step runs before every step queued ahead of it
    assert all(r.status == "succeeded" for r in records.values())
    started = records[urgent].steps["s"].started_at
    assert all(started < records[rid].steps["s"].started_at for rid in queued)
