"""Limits end to end: hostile group values, instance caps, large fan-outs, a full Redis."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import kombu
import pytest
import redis
from conftest import PREFIX, QUEUE, SESSION, WorkerProcess, run_cli, wait_for_event
from observe_helpers import free_port

from runbook_celery import Run, WaitTimeout, submit
from runbook_celery.engine import fullredis
from runbook_celery.engine.fullredis import use_patient_redis_transport
from runbook_celery.store import RunStore

pytestmark = [pytest.mark.slow]

GROUP = """
name: deploy
params:
  env: prod
concurrency: {{group: "deploy-{session}-${{{{ params.env }}}}", limit: 1, on_conflict: queue}}
steps:
  - id: go
    run: while [ ! -e {release} ]; do sleep 0.02; done
"""


def test_a_group_value_cannot_name_another_groups_key(worker, write_workflow, tmp_path, store):
    """`env=prod:queue` once made the queue list of group `prod` its own active set."""
    release = tmp_path / "release"
    wf = write_workflow(GROUP.format(session=SESSION, release=release))
    hostile = submit(wf, {"env": "prod:queue"})
    wait_for_event(store, hostile.id, "step_started", "go")
    first = submit(wf, {"env": "prod"})
    wait_for_event(store, first.id, "step_started", "go")
    res = run_cli("trigger", str(wf), "-p", "env=prod")
    assert res.returncode == 0, res.stderr  # was 3: "broker ... unreachable" (WRONGTYPE)
    second = res.stdout.strip()
    assert store.run_status(second) == "queued"
    release.touch()
    assert hostile.wait(timeout=60).status == "succeeded"
    a = first.wait(timeout=60)
    b = Run(second).wait(timeout=60)
    assert a.status == b.status == "succeeded"
    assert b.steps["go"].started_at >= a.steps["go"].finished_at


WAITING = """
name: slow
steps:
  - id: a
    run: |
      while [ ! -e {release} ]; do sleep 0.02; done
      echo "done=yes" >> "$RUNBOOK_OUTPUT"
  - id: b
    needs: [a]
    run: echo "b=${{{{ steps.a.outputs.done }}}}" >> "$RUNBOOK_OUTPUT"
"""


def test_trigger_wait_timeout_exits_5_and_the_run_goes_on(worker, write_workflow, tmp_path, store):
    release = tmp_path / "release"
    wf = write_workflow(WAITING.format(release=release))
    started = time.monotonic()
    res = run_cli("trigger", str(wf), "--wait", "--timeout", "1")
    assert res.returncode == 5, res.stderr
    assert time.monotonic() - started < 15
    run_id = res.stdout.splitlines()[0].strip()
    assert f"run {run_id} did not finish within 1s; it goes on (status running)" in res.stderr
    assert "Traceback" not in res.stderr
    watched = run_cli("watch", run_id, "--timeout", "0.5")
    assert watched.returncode == 5 and "did not finish within 0.5s" in watched.stderr
    with pytest.raises(WaitTimeout):
        Run(run_id).wait(timeout=0.3)
    release.touch()
    record = Run(run_id).wait(timeout=60)
    assert record.status == "succeeded" and record.steps["b"].outputs == {"b": "yes"}


def test_timeout_without_wait_is_refused(write_workflow):
    res = run_cli("trigger", str(write_workflow(WAITING.format(release="x"))), "--timeout", "3")
    assert res.returncode == 2 and "--timeout applies to --wait" in res.stderr


@pytest.fixture
def small_redis(tmp_path):  # type: ignore[no-untyped-def]
    """A private redis-server (noeviction, no persistence) whose maxmemory a test lowers."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=10)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0", client
    proc.terminate()
    proc.wait(timeout=20)


class PrivateWorker(WorkerProcess):
    """A worker on another Redis: the test process's Celery app cannot ping it."""

    def _wait_ready(self, timeout: float = 60) -> None:
        _wait_for_log(self, " ready.", timeout)


def _wait_for_log(w: WorkerProcess, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in w.log_path.read_text(errors="replace"):
        if w.proc.poll() is not None:
            raise AssertionError(f"worker died: {w.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} in the worker log in {timeout}s")
        time.sleep(0.05)


def test_a_full_redis_pauses_the_worker_and_the_run_resumes_when_memory_is_freed(
    small_redis, write_workflow, tmp_path
):
    """Redis full (noeviction): the worker once died with `Unrecoverable error:
    OutOfMemoryError` and the run hung. Now the step keeps its result until memory is
    freed, the worker stays up, `watch --timeout` says why, and the run then ends."""
    url, admin = small_redis
    env = {"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url}
    w = PrivateWorker("full", concurrency=2, env=env)
    try:
        store = RunStore(admin, PREFIX)
        release = tmp_path / "release"
        res = run_cli("trigger", str(write_workflow(WAITING.format(release=release))), env=env)
        assert res.returncode == 0, res.stderr
        run_id = res.stdout.strip()
        wait_for_event(store, run_id, "step_started", "a")
        admin.config_set("maxmemory", "1")  # every write that needs memory is refused now
        release.touch()
        _wait_for_log(w, "Redis is full")
        watched = run_cli("watch", run_id, "--timeout", "1", env=env)
        assert watched.returncode == 5, watched.stderr
        assert "Redis is full" in watched.stderr and "Traceback" not in watched.stderr
        assert w.proc.poll() is None  # the worker is still up
        admin.config_set("maxmemory", "0")
        wait_for_event(store, run_id, "workflow_succeeded", timeout=60)
        record = store.get_run(run_id)
        assert record.steps["a"].attempts == 1  # recorded, not run again
        assert record.steps["b"].outputs == {"b": "yes"}
        assert w.proc.poll() is None
    finally:
        w.stop()


RUNNING = """
name: long
steps:
  - id: a
    run: |
      echo $$ > {pidfile}
      while [ ! -e {release} ]; do sleep 0.05; done
      echo "done=yes" >> "$RUNBOOK_OUTPUT"
"""
FULL_LEASE = 3  # seconds: the step's lease, and how fast an unrenewed step is stopped


def _bash_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_a_running_step_keeps_its_lease_and_its_watch_while_redis_is_full(
    small_redis, write_workflow, tmp_path
):
    """A full Redis refused the renewal (SET), so after ½ lease the worker stopped a step
    that was fine, and after a lease its lease and watch ran out: once memory was freed
    the reconciler could start a second copy. Renewal is a PEXPIRE now, allowed then."""
    url, admin = small_redis
    env = {"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url}
    env["RUNBOOK_LEASE_SECONDS"] = str(FULL_LEASE)
    w = PrivateWorker("full-lease", concurrency=1, env=env)
    try:
        store = RunStore(admin, PREFIX)
        pidfile, release = tmp_path / "pid", tmp_path / "release"
        wf = write_workflow(RUNNING.format(pidfile=pidfile, release=release))
        res = run_cli("trigger", str(wf), env=env)
        assert res.returncode == 0, res.stderr
        run_id = res.stdout.strip()
        wait_for_event(store, run_id, "step_started", "a")
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline and w.proc.poll() is None
            time.sleep(0.02)  # Bash writes it first thing; a file has no event to wait on
        pid = int(pidfile.read_text())
        lease, member = store.keys.lease(run_id, "a"), f"{run_id}|a"

        # When Redis is full for three lease periods while the step runs
        admin.config_set("maxmemory", "1")
        until = time.monotonic() + 3 * FULL_LEASE
        while time.monotonic() < until:  # the property holds throughout, not at one moment
            now = store.server_time()
            # Then the step runs on, its lease never lapses and it stays watched
            assert _bash_alive(pid), "the step was stopped while Redis was full"
            assert admin.pttl(lease) > 0, "the lease ran out while Redis was full"
            assert (admin.zscore(store.keys.leases, member) or 0) > now, "the watch ran out"
            time.sleep(0.1)  # sampling an invariant over a period: nothing to wait for
        admin.config_set("maxmemory", "0")
        release.touch()
        wait_for_event(store, run_id, "workflow_succeeded", timeout=60)
        record = store.get_run(run_id)
        assert record.steps["a"].attempts == 1 and record.steps["a"].outputs == {"done": "yes"}
        types = [e["type"] for _, e in store.events(run_id)]
        assert "step_handed_back" not in types and "step_result_discarded" not in types
        assert "lost its lease" not in w.log_path.read_text(errors="replace")
    finally:
        w.stop()


def test_the_broker_transport_waits_for_memory_instead_of_dropping_a_message(small_redis, caplog):
    """kombu's own transport raises OutOfMemoryError after taking the message off its
    queue (lost) and, on an ack, kills Celery's consumer. Ours waits for memory."""
    url, admin = small_redis
    use_patient_redis_transport()
    caplog.set_level(logging.WARNING, logger="runbook_celery.worker")
    with kombu.Connection(url) as conn:
        assert isinstance(conn.transport, fullredis.Transport)
        queue = conn.SimpleQueue(f"oom-{SESSION}")
        queue.put({"n": 1})
        admin.config_set("maxmemory", "1")
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(queue.get(timeout=30)))
        reader.start()
        deadline = time.monotonic() + 20
        while "Redis is full" not in caplog.text:
            assert time.monotonic() < deadline and reader.is_alive(), got
            time.sleep(0.05)
        admin.config_set("maxmemory", "0")
        reader.join(timeout=30)
        message = got[0]
        assert message.payload == {"n": 1}  # type: ignore[attr-defined]
        admin.config_set("maxmemory", "1")
        acker = threading.Thread(target=message.ack)  # type: ignore[attr-defined]
        acker.start()
        deadline = time.monotonic() + 20
        while caplog.text.count("Redis is full") < 2:
            assert time.monotonic() < deadline and acker.is_alive()
            time.sleep(0.05)
        admin.config_set("maxmemory", "0")
        acker.join(timeout=30)
        assert not acker.is_alive() and admin.hlen("unacked") == 0
        queue.close()


FAN = """
name: fan
steps:
  - id: list
    run: |
      python3 -c "import json; print('items=' + json.dumps(list(range({n}))))" \\
        >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [list]
    for_each: ${{{{ steps.list.outputs.items }}}}
    run: {run}
"""


def _queued(client: redis.Redis) -> int:
    """Messages waiting in our queue, at every priority."""
    return sum(client.llen(f"{QUEUE}:{p}" if p else QUEUE) for p in range(10))


def test_a_for_each_over_the_instance_cap_fails_before_fanning_out(
    worker, write_workflow, store, redis_client
):
    wf = write_workflow(FAN.format(n=10_001, run="'true'"))
    record = submit(wf).wait(timeout=60)
    each = record.steps["each"]
    assert record.status == "failed" and each.status == "failed"
    assert each.reason == "too_many_instances"
    assert (
        "10,001 items" in each.stderr_tail[-1] and "RUNBOOK_MAX_INSTANCES" in each.stderr_tail[-1]
    )
    assert not any("[" in sid for sid in record.steps)  # no instance was recorded


def test_a_large_fan_out_sends_a_window_and_a_cancel_takes_effect_in_seconds(
    worker, write_workflow, store, redis_client
):
    wf = write_workflow(FAN.format(n=10_000, run="sleep 600"))
    run = submit(wf)
    wait_for_event(store, run.id, "step_started", "each[0]", timeout=60)
    # the instances go out in lanes: a window of messages, not 10,000 of them
    assert _queued(redis_client) <= 1000
    started = time.monotonic()
    run.cancel()
    record = run.wait(timeout=60)
    took = time.monotonic() - started
    assert record.status == "cancelled" and record.steps["each"].status == "cancelled"
    assert record.steps["each[9999]"].status == "cancelled"
    assert took < 10, f"cancel took {took:.1f}s"
