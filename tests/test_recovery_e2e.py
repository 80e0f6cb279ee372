"""Messages lost between the broker and a worker: the run goes on, end to end.

kombu's Redis transport pops a message from its queue (BRPOP) and records it as
unacknowledged (HSET unacked) in a second round trip, and Celery hands it to our
``task_received`` watch later still. A worker killed in the first gap loses the message;
one killed in the second leaves it unacknowledged and unwatched. Both hung runs in the
SIGKILL soak. These tests put a message in exactly those states (as the killed worker
would have left it) and check that the run still ends, within a few lease periods
(``RUNBOOK_LEASE_SECONDS`` is 6 s in the test session).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from conftest import SESSION, WorkerProcess, wait_for_event

from runbook_celery import submit

pytestmark = [pytest.mark.slow]


def _take_message(client: redis.Redis, queue: str, timeout: float = 30) -> tuple[dict, bytes]:
    """Pop the one message waiting in ``queue`` (any priority list), as a worker's BRPOP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in [queue, *(f"{queue}:{p}" for p in range(1, 10))]:
            raw = client.rpop(key)
            if raw is not None:
                return json.loads(raw), raw
        time.sleep(0.05)
    raise AssertionError(f"no message arrived in {queue}")


def _as_unacknowledged(client: redis.Redis, payload: dict[str, Any]) -> None:
    """Record a popped message as kombu does on delivery (then the worker dies)."""
    info = payload["properties"]["delivery_info"]
    tag = payload["properties"]["delivery_tag"]
    client.hset("unacked", tag, json.dumps([payload, info["exchange"], info["routing_key"]]))
    client.zadd("unacked_index", {tag: time.time()})


def _one_step(write_workflow, queue: str):  # type: ignore[no-untyped-def]
    return write_workflow(f"""
name: lost-first
steps:
  - id: a
    queue: {queue}
    run: echo "ran=1" >> "$RUNBOOK_OUTPUT"
""")


@pytest.mark.timeout(120)
def test_a_message_left_unacknowledged_and_unwatched_by_a_killed_worker_is_put_back(
    write_workflow, redis_client, store
):
    # Given a run whose first message a worker popped and recorded unacknowledged, then
    # died before it could watch the step (no trace of it but kombu's unacked hash)
    queue = f"lost-unacked-{SESSION}"
    run = submit(_one_step(write_workflow, queue))
    payload, _ = _take_message(redis_client, queue)
    _as_unacknowledged(redis_client, payload)

    # When a worker serves that queue
    w = WorkerProcess("unacked", queues=queue, concurrency=1)
    try:
        # Then the message goes back on its queue and the run ends, well before the
        # visibility timeout (6 h)
        final = run.wait(timeout=60)
    finally:
        w.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["a"].outputs == {"ran": "1"}
    assert redis_client.hget("unacked", payload["properties"]["delivery_tag"]) is None


@pytest.mark.timeout(120)
def test_a_message_popped_by_a_worker_killed_before_recording_it_is_published_again(
    write_workflow, redis_client, store
):
    # Given a run whose first message a worker popped and died with (it is nowhere)
    queue = f"lost-popped-{SESSION}"
    run = submit(_one_step(write_workflow, queue))
    _take_message(redis_client, queue)

    # When a worker serves that queue, then the step is published again and the run ends
    w = WorkerProcess("popped", queues=queue, concurrency=1)
    try:
        final = run.wait(timeout=60)
    finally:
        w.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["a"].attempts == 1  # it never ran before


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("worker")
def test_a_successors_message_lost_after_its_need_handed_on_is_published_again(
    write_workflow, redis_client, store
):
    # Given a canvas chain a -> b whose b runs on a queue no worker serves yet: a ran and
    # handed on (Celery published b's message), and b's message was then lost
    queue = f"lost-next-{SESSION}"
    wf = write_workflow(f"""
name: lost-next
steps:
  - id: a
    run: echo "v=1" >> "$RUNBOOK_OUTPUT"
  - id: b
    needs: [a]
    queue: {queue}
    run: echo "got=${{{{ steps.a.outputs.v }}}}" >> "$RUNBOOK_OUTPUT"
""")
    run = submit(wf)
    wait_for_event(store, run.id, "step_succeeded", "a")
    _take_message(redis_client, queue)

    # When a worker serves b's queue, then b is published again and the run ends
    w = WorkerProcess("next", queues=queue, concurrency=1)
    try:
        final = run.wait(timeout=60)
    finally:
        w.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["b"].outputs == {"got": "1"}


LANES = """
name: lost-lane
steps:
  - id: m
    queue: {queue}
    matrix: {{i: [{items}]}}
    max_parallel: 2
    run: |
      f={release}-${{{{ matrix.i }}}}
      while [ ! -e "$f" ]; do sleep 0.05; done
      echo "i=${{{{ matrix.i }}}}" >> "$RUNBOOK_OUTPUT"
"""


@pytest.mark.timeout(120)
def test_an_instance_of_the_first_window_whose_message_is_lost_is_sent_again(
    write_workflow, redis_client, store, tmp_path
):
    # Given a fan-out of two instances sent at once, on a queue one single-slot worker
    # serves: m[0] runs (and waits), m[1] waits in the queue, and m[1]'s message is lost
    queue = f"lost-window-{SESSION}"
    release = tmp_path / "release"
    wf = write_workflow(LANES.format(queue=queue, items="0, 1", release=release))
    w = WorkerProcess("window", queues=queue, concurrency=1)
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "m[0]")
        _take_message(redis_client, queue)
        for i in (0, 1):
            (tmp_path / f"release-{i}").touch()
        # When m[0] ends, then m[1] is sent again (it was watched from the fan-out on),
        # the last instance joins m and the run ends
        final = run.wait(timeout=60)
    finally:
        w.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["m"].outputs == [{"i": "0"}, {"i": "1"}]


@pytest.mark.timeout(120)
def test_the_next_instance_of_a_lane_whose_message_is_lost_is_sent_again(
    write_workflow, redis_client, store, tmp_path
):
    # Given a fan-out of three instances in two lanes on a single-slot worker: m[0] ends at
    # once and sends m[2] (its lane's next); while m[1] runs, m[2]'s message is lost
    queue = f"lost-lane-{SESSION}"
    release = tmp_path / "release"
    wf = write_workflow(LANES.format(queue=queue, items="0, 1, 2", release=release))
    for i in (0, 2):
        (tmp_path / f"release-{i}").touch()
    w = WorkerProcess("lane", queues=queue, concurrency=1)
    try:
        run = submit(wf)
        wait_for_event(store, run.id, "step_started", "m[1]")
        payload, _ = _take_message(redis_client, queue)
        assert payload["headers"]["argsrepr"].endswith("step=m[2]")
        (tmp_path / "release-1").touch()
        # When m[1] ends, then m[2] is sent again (watched since m[0] ended), and the run ends
        final = run.wait(timeout=60)
    finally:
        w.stop()
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["m"].outputs == [{"i": "0"}, {"i": "1"}, {"i": "2"}]
    assert final.steps["m[2]"].attempts == 1
