"""Fencing end to end: a step whose lease lapses is stopped before another delivery can run
it, and only the delivery that holds the step records a result.

Real workers on real Redis. The lease is 3 s here, so the guardian kills a step whose
lease has not been renewed for 2.25 s, and another delivery may take it over after 3 s.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, SESSION, WorkerProcess, run_cli, wait_for_event

from runbook_celery import submit
from runbook_celery.client.run import Run
from runbook_celery.store import RunStore
from runbook_celery.store.events import StepStatus

sys.path.insert(0, str(ROOT / "scripts"))
from reliability_infra import RedisServer, Worker

pytestmark = [pytest.mark.slow]

LEASE = {"RUNBOOK_LEASE_SECONDS": "3"}


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _starts(path: Path) -> dict[int, int]:
    """execution (1, 2, ...) -> the process group its Bash ran as (written by the step)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return {i: int(line.split()[1]) for i, line in enumerate(lines, 1)}


def _workflow(write_workflow, queue: str, starts: Path, overlap: Path) -> Path:  # type: ignore[no-untyped-def]
    # the first execution runs until it is killed; a later one records whether an earlier
    # one's process group was still alive when it started (it must not be)
    return write_workflow(f"""
name: fenced
steps:
  - id: x
    queue: {queue}
    run: |
      echo "$RUNBOOK_STEP_ATTEMPT $$" >> {starts}
      n=$(wc -l < {starts})
      if [ "$n" = 1 ]; then sleep 300 & wait; fi
      for pg in $(cut -d' ' -f2 {starts}); do
        # a live process of an earlier attempt's group (zombies are dead, not yet reaped)
        if [ "$pg" != "$$" ]; then
          ps -eo pgid=,stat= | awk -v pg="$pg" '$1 == pg && $2 !~ /^Z/' >> {overlap}
        fi
      done
      [ -s {overlap} ] || rm -f {overlap}
      echo "who=$n" >> "$RUNBOOK_OUTPUT"
""")


def _wait_for(store: RunStore, run_id: str, match: Callable[[dict[str, str]], bool]) -> None:
    """Block on the run's event stream until an event matches (60 s at most)."""
    deadline = time.monotonic() + 60
    for _eid, event in store.follow_events(run_id, block_ms=500):
        if event and match(event):
            return
        assert time.monotonic() < deadline, "no such event in 60s"


def _events(store: RunStore, run_id: str, etype: str) -> list[dict[str, str]]:
    return [e for _, e in store.events(run_id) if e["type"] == etype]


@pytest.mark.timeout(180)
def test_a_paused_workers_step_is_killed_before_another_worker_takes_it_over(
    write_workflow, tmp_path, store
):
    # Given step x running on worker A (attempt 1)
    queue = f"fence-pause-{SESSION}"
    starts, overlap = tmp_path / "starts", tmp_path / "overlap"
    wf = _workflow(write_workflow, queue, starts, overlap)
    a = WorkerProcess("fence-a", queues=queue, concurrency=1, env=LEASE)
    b = None
    pool = 0
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "x")
        deadline = time.monotonic() + 10
        while 1 not in _starts(starts) and time.monotonic() < deadline:
            time.sleep(0.05)  # the step writes its process group first thing
        first = _starts(starts)[1]
        pool = _parent(first)

        # When A's pool process stops (a long pause: it cannot renew the lease) and
        # worker B comes up
        os.kill(pool, signal.SIGSTOP)
        b = WorkerProcess("fence-b", queues=queue, concurrency=1, env=LEASE)
        _wait_for(store, run.id, lambda e: e["type"] == "step_started" and e["attempt"] == "2")

        # Then attempt 1's processes were dead before attempt 2 started (the guardian
        # killed them at 3/4 of the lease, though their pool process was stopped)
        assert not _group_alive(first), "attempt 1 still runs beside attempt 2"
        final = Run(run.id).wait(timeout=60)
        assert not overlap.exists(), overlap.read_text()

        # When A's pool process goes on
        os.kill(pool, signal.SIGCONT)
        pool = 0
        discarded = wait_for_event(store, run.id, "step_result_discarded", "x", timeout=60)
    finally:
        if pool:
            os.kill(pool, signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()

    # Then only attempt 2's result is recorded; attempt 1's is kept as an event
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["x"].outputs == {"who": "2"}
    assert final.steps["x"].attempts == 2
    assert discarded["attempt"] == "1" and discarded["current_attempt"] == "2"
    assert len(_events(store, run.id, "step_succeeded")) == 1
    assert not _group_alive(first)


@pytest.mark.timeout(120)
def test_a_superseded_step_is_killed_at_once_and_records_nothing(write_workflow, tmp_path, store):
    # Given step x running on worker A (attempt 1)
    queue = f"fence-super-{SESSION}"
    starts, overlap = tmp_path / "starts", tmp_path / "overlap"
    wf = _workflow(write_workflow, queue, starts, overlap)
    a = WorkerProcess("fence-c", queues=queue, concurrency=1, env=LEASE)
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "x")
        deadline = time.monotonic() + 10
        while 1 not in _starts(starts) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _starts(starts)[1]

        # When its lease lapses and another delivery (played by this test) takes the step
        for _ in range(50):
            store.r.delete(store.keys.lease(run.id, "x"))
            taken = store.start_step(
                run.id,
                "x",
                token="other-delivery",
                needs=[],
                output_steps=[],
                workflow="fenced",
                lease_seconds=30,
                max_attempts=5,
            )
            if taken.action == "start":
                break
        assert taken.action == "start" and taken.attempt == 2
        superseded = time.monotonic()

        # Then A notices at its next renewal and kills attempt 1's processes at once
        while _group_alive(first) and time.monotonic() - superseded < 5:
            time.sleep(0.05)
        assert not _group_alive(first)
        assert time.monotonic() - superseded < 3 * 0.25 + 1.5  # one renewal period + slack
        discarded = wait_for_event(store, run.id, "step_result_discarded", "x", timeout=30)

        # and records nothing: the holder's result is the one the record gets
        assert store.get_run(run.id).steps["x"].status == "running"
        out = store.finish_step(
            run.id,
            "x",
            token="other-delivery",
            status=StepStatus.SUCCEEDED,
            workflow="fenced",
            outputs={"who": "other"},
            attempt=2,
        )
        assert not out.superseded and out.run_status == "succeeded"
    finally:
        a.stop()
    assert discarded["attempt"] == "1"
    final = store.get_run(run.id)
    assert final.steps["x"].outputs == {"who": "other"}
    assert len(_events(store, run.id, "step_succeeded")) == 1


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.mark.timeout(180)
def test_a_worker_cut_off_from_redis_stops_its_step_itself(private_redis, tmp_path):
    # Given a worker on a Redis of its own, running step x (attempt 1)
    queue = f"fence-cut-{SESSION}"
    starts, overlap = tmp_path / "starts", tmp_path / "overlap"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")},
        "RUNBOOK_REDIS_URL": private_redis.url(0),
        "RUNBOOK_BROKER_URL": private_redis.url(0),
        "RUNBOOK_PREFIX": f"fence-{SESSION}",
        "RUNBOOK_QUEUE": queue,
        "RUNBOOK_KILL_GRACE": "1",
        **LEASE,
    }
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        _workflow(lambda text: text, queue, starts, overlap)  # type: ignore[arg-type]
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = Worker("cut", env, logs, concurrency=1)
    worker.start()
    client = redis.Redis(host="127.0.0.1", port=private_redis.port)
    store = RunStore(client, env["RUNBOOK_PREFIX"])
    stopped = False
    try:
        res = run_cli("trigger", str(wf), env=env)
        assert res.returncode == 0, res.stderr
        run_id = res.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 30
        while 1 not in _starts(starts) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _starts(starts)[1]

        # When Redis stops answering (frozen: connections stay open, nothing comes back)
        assert private_redis.proc is not None
        private_redis.proc.send_signal(signal.SIGSTOP)
        stopped = True
        frozen = time.monotonic()

        # Then the worker stops the step within 3/4 of the lease, before the lease
        # could expire and another worker take the step over
        while _group_alive(first) and time.monotonic() - frozen < 10:
            time.sleep(0.05)
        killed_after = time.monotonic() - frozen
        assert not _group_alive(first)
        assert killed_after < 3 * 0.75 + 0.5, killed_after

        # and once Redis answers again, the step is handed back and runs again
        private_redis.proc.send_signal(signal.SIGCONT)
        stopped = False
        deadline = time.monotonic() + 90
        while store.run_status(run_id) != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
        final = store.get_run(run_id)
    finally:
        if stopped and private_redis.proc is not None:
            private_redis.proc.send_signal(signal.SIGCONT)
        worker.stop()
    assert final.status == "succeeded", (final.to_dict(), worker.log_tail())
    assert final.steps["x"].outputs == {"who": "2"}  # the first execution recorded nothing
    back = [e for _, e in store.events(run_id) if e["type"] == "step_handed_back"]
    assert [e.get("reason") for e in back] == ["lease_lost"], back
    assert not overlap.exists()
