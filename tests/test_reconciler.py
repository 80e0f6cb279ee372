"""The lease reconciler on a fake Redis: deliveries dropped before their step started."""

from __future__ import annotations

import json
import uuid

import fakeredis
import pytest

from runbook_celery import dispatch, workerhooks
from runbook_celery.store import RunStore


def _run(store: RunStore, mode: str) -> str:
    run = uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": mode,
        "steps": [{"id": "a", "needs": []}, {"id": "b", "needs": ["a"]}],
    }
    store.create_run(run, snapshot, "sha")
    return run


@pytest.fixture
def store() -> RunStore:
    return RunStore(fakeredis.FakeRedis(), prefix="reconciler")


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    sent: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(
        dispatch, "publish_steps", lambda snap, run, steps: sent.append((run, list(steps)))
    )
    return sent


def test_a_delivery_dropped_by_the_worker_goes_back_on_its_queue(store, published):
    # Given step a's message was received (watched) and sits in kombu's unacked hash,
    # and the worker holding it forgot it (broker connection lost): the watch ran out
    run = _run(store, "dynamic")
    store.watch_steps([f"{run}|a"], -1)
    payload = {"headers": {"id": f"{run}.a"}, "properties": {}}
    store.r.hset("unacked", "tag-1", json.dumps([payload, "q", "q"]))
    store.r.zadd("unacked_index", {"tag-1": 1})
    # When the reconciler passes
    dealt = workerhooks.recover_once(store, store.r, 5)
    # Then the message is back on its queue, and the step is watched again (the restored
    # message may be lost too, on its way to the next worker)
    assert dealt == [f"{run}|a"]
    assert store.r.hlen("unacked") == 0
    assert json.loads(store.r.lpop("q"))["headers"]["id"] == f"{run}.a"
    assert store.r.zscore(store.keys.leases, f"{run}|a") > store.server_time()
    assert published == []


@pytest.mark.parametrize("mode", ["canvas", "dynamic"])
def test_a_delivery_acknowledged_before_its_step_started_is_published_again(store, published, mode):
    # Given step a's message was received, then acknowledged without a ever starting
    # (Celery terminated the request on a connection loss): it is nowhere
    run = _run(store, mode)
    store.watch_steps([f"{run}|a"], -1)
    # When the reconciler passes
    workerhooks.recover_once(store, store.r, 5)
    # Then a is published again, by dynamic dispatch, and watched until it hands on
    assert published == [(run, ["a"])]
    assert store.run_mode(run) == "dynamic"
    assert store.r.zscore(store.keys.leases, f"{run}|a") > store.server_time()


def test_a_watched_step_that_a_gate_parked_is_left_alone(store, published):
    run = _run(store, "dynamic")
    store.r.hset(store.keys.step(run, "a"), "status", "waiting")
    store.watch_steps([f"{run}|a"], -1)
    workerhooks.recover_once(store, store.r, 5)
    assert published == []
    assert store.r.zscore(store.keys.leases, f"{run}|a") is None


class _Task:
    def __init__(self, name: str) -> None:
        self.name = name


class _Request:
    """What matters of celery.worker.request.Request: its name is the shadow name."""

    def __init__(self, task: str, args: tuple[str, str]) -> None:
        self.task = _Task(task)
        self.name = f"wf.{args[1]}"
        self.args = args


def test_a_received_step_is_watched_while_the_worker_holds_it(store, monkeypatch):
    from celery.worker import state

    from runbook_celery import tasks
    from runbook_celery.app import STEP_TASK
    from runbook_celery.settings import get_settings

    monkeypatch.setattr(tasks, "_worker_store", lambda: (get_settings(), store))
    held, started, other = (
        _Request(STEP_TASK, ("r1", "a")),
        _Request(STEP_TASK, ("r1", "b")),
        _Request("runbook.run_timeout", ("r1", "x")),
    )
    for req in (held, started, other):
        workerhooks._watch_delivery(request=req)
    assert store.r.zscore(store.keys.leases, "r1|x") is None  # only step tasks
    store.watch_steps(["r1|a", "r1|b"], -1)  # as if a lease period went by
    state.reserved_requests.update((held, started))
    state.active_requests.add(started)
    try:
        workerhooks._keep_watching(store, 30)
    finally:
        state.reserved_requests.discard(held)
        state.reserved_requests.discard(started)
        state.active_requests.discard(started)
    # the held request's watch goes on; the started one is up to its lease now
    assert [(r, s) for r, s in store.expired_leases() if r == "r1"] == [("r1", "b")]
