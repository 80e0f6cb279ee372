"""A step's FINISH sends what follows it, in the same script, when broker and store share a
Redis: a chain link's next link and Celery result (engine/chainlink.py), a dynamic run's
ready children (engine/readychildren.py); Celery sees what it would have done itself (real
worker, real Redis, Redis' MONITOR as the witness)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from conftest import TEST_REDIS_URL

from runbook_celery.client.api import submit_snapshot
from runbook_celery.core.settings import get_settings
from runbook_celery.definition.loader import load_workflow
from runbook_celery.engine.app import app
from runbook_celery.engine.chainlink import shares_redis
from runbook_celery.plan.compile import CANVAS, DYNAMIC, build_snapshot

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("worker"),
    pytest.mark.skipif(
        not shares_redis(get_settings()),
        reason="this session's broker is not the store's Redis (the AMQP suite)",
    ),
]

CHAIN = """
name: three-links
steps:
  - id: a
    run: echo "n=1" >> "$RUNBOOK_OUTPUT"
  - id: b
    needs: [a]
    run: echo "n=2" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [b]
    run: echo "n=3" >> "$RUNBOOK_OUTPUT"
"""


class Witness:
    """Every command Redis runs while the block runs (MONITOR), in a thread."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.stop = f"stop-{id(self)}"
        self._client = redis.Redis.from_url(TEST_REDIS_URL)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                if self.stop in command["command"]:
                    return
                self.commands.append(command)

    def __enter__(self) -> Witness:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._client.echo(self.stop)  # wakes the reader: it stops at its own marker
        self._thread.join(10)
        self._client.close()


def test_a_chain_links_finish_sends_the_next_link_and_stores_its_result(
    write_workflow: Any,
) -> None:
    snapshot = build_snapshot(load_workflow(write_workflow(CHAIN)))
    assert snapshot["mode"] == CANVAS
    with Witness() as witness:
        run = submit_snapshot(snapshot)
        final = run.wait(timeout=60)
    assert final.succeeded
    pushes = [
        c
        for c in witness.commands
        if c["command"].upper().startswith("LPUSH ") and run.id in c["command"]
    ]
    # the first link is sent by submit; b and c by the FINISH of a and b, inside the script
    by_script = [c["client_type"] == "lua" for c in pushes]
    assert by_script == [False, True, True], pushes
    # Celery's result of each link, as Celery would have stored it: SUCCESS, the step's
    # outputs, and the next link as its child. a's and b's were stored by their FINISH,
    # before the run ended; c, the last, has no next link: Celery stores its result as its
    # task ends, a moment after its FINISH ended the run (hence get(), which waits).
    ids = {step: f"{run.id}.{step}" for step in "abc"}
    for step in "ab":
        assert AsyncResult(ids[step], app=app).state == "SUCCESS"
    for step, n in (("a", "1"), ("b", "2"), ("c", "3")):
        result = AsyncResult(ids[step], app=app)
        assert result.get(timeout=30, propagate=False)["outputs"] == {"n": n}
        assert result.state == "SUCCESS"
    assert [child.id for child in AsyncResult(ids["a"], app=app).children] == [ids["b"]]
    assert [child.id for child in AsyncResult(ids["b"], app=app).children] == [ids["c"]]


# not series-parallel: dynamic dispatch (a -> c, b -> c, b -> d, a -> d is the "N" shape)
N_SHAPE = """
name: n-shape
steps:
  - id: a
    run: echo "n=a" >> "$RUNBOOK_OUTPUT"
  - id: b
    run: echo "n=b" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [a, b]
    run: echo "n=c" >> "$RUNBOOK_OUTPUT"
  - id: d
    needs: [b]
    run: echo "n=d" >> "$RUNBOOK_OUTPUT"
"""


def test_a_dynamic_steps_finish_sends_the_children_it_makes_ready(write_workflow: Any) -> None:
    snapshot = build_snapshot(load_workflow(write_workflow(N_SHAPE)))
    assert snapshot["mode"] == DYNAMIC
    with Witness() as witness:
        run = submit_snapshot(snapshot)
        final = run.wait(timeout=60)
    assert final.succeeded
    assert {s: r.outputs for s, r in final.steps.items()} == {
        s: {"n": s} for s in ("a", "b", "c", "d")
    }
    pushes = [
        c
        for c in witness.commands
        if c["command"].upper().startswith("LPUSH ") and run.id in c["command"]
    ]
    # a and b by submit; c and d each once, by the FINISH that made it ready
    assert sorted(c["client_type"] == "lua" for c in pushes) == [False, False, True, True]
    for step in "cd":
        assert sum(f"{run.id}.{step}" in c["command"] for c in pushes) == 1


FAN = """
name: fan
steps:
  - id: a
    run: 'true'
  - id: b
    needs: [a]
    run: echo "n=b" >> "$RUNBOOK_OUTPUT"
  - id: c
    needs: [a]
    run: echo "n=c" >> "$RUNBOOK_OUTPUT"
  - id: d
    needs: [b, c]
    run: 'true'
"""


def test_a_chord_members_result_is_stored_by_its_finish_and_the_chord_still_counts_it(
    write_workflow: Any,
) -> None:
    snapshot = build_snapshot(load_workflow(write_workflow(FAN)))
    assert snapshot["mode"] == CANVAS
    with Witness() as witness:
        run = submit_snapshot(snapshot)
        final = run.wait(timeout=60)
    assert final.succeeded  # d ran: the chord counted b and c
    for step in "bc":
        key = f"celery-task-meta-{run.id}.{step}"
        touching = [
            c
            for c in witness.commands
            if key in c["command"]
            and c["command"].split()[0].upper() in ("GET", "MGET", "SET", "SETEX", "PUBLISH")
        ]
        # written once, inside FINISH's script; Celery neither read it first nor wrote it
        # (the client's SUBSCRIBE to it, as Celery's chord does at submit, is left aside)
        assert [c["command"].split()[0].upper() for c in touching] == ["SET", "PUBLISH"]
        assert {c["client_type"] for c in touching} == {"lua"}
        result = AsyncResult(f"{run.id}.{step}", app=app)
        assert result.state == "SUCCESS" and result.result["outputs"] == {"n": step}
