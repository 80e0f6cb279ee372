"""The lease reconciler on the store's in-memory double (the store's own Lua on fakeredis;
no Redis server, no worker): deliveries dropped before their step started."""

from __future__ import annotations

import json
import uuid

import pytest

from runbook_celery.engine import dispatch, workerhooks
from runbook_celery.store import RunStore
from runbook_celery.store.events import StepStatus
from runbook_celery.store.memory import memory_store


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
    return memory_store(prefix="reconciler")


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

    from runbook_celery.core.settings import get_settings
    from runbook_celery.engine import workerstore
    from runbook_celery.engine.app import STEP_TASK

    monkeypatch.setattr(workerstore, "worker_store", lambda: (get_settings(), store))
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
        workerhooks.keep_watching(store, 30)
    finally:
        state.reserved_requests.discard(held)
        state.reserved_requests.discard(started)
        state.active_requests.discard(started)
    # the held request's watch goes on; the started one is up to its lease now
    assert [(r, s) for r, s in store.expired_leases() if r == "r1"] == [("r1", "b")]


def _fan_out_run(store: RunStore, n: int, window: int) -> str:
    """A dynamic run whose step m fanned out ``n`` instances in lanes of ``window``."""
    run = uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": "dynamic",
        "steps": [{"id": "m", "needs": [], "matrix": {"i": [str(i) for i in range(n)]}}],
    }
    store.create_run(run, snapshot, "sha")
    store.r.hset(store.keys.step(run, "m"), "status", "running")
    store.add_instances(run, "m", [{"matrix": {"i": str(i)}} for i in range(n)], window, 30)
    return run


def _ended_without_handing_on(store: RunStore, run: str, step: str) -> None:
    """The instance was recorded, then its worker died before it sent on or joined."""
    store.start_step(
        run, step, token="t", needs=[], output_steps=[], workflow="wf", lease_seconds=30,
        max_attempts=5,
    )  # fmt: skip
    store.finish_step(run, step, token="t", status=StepStatus.SUCCEEDED, workflow="wf", attempt=1)
    store.watch_steps([f"{run}|{step}"], -1)  # its watch ran out; its message was acked


@pytest.fixture
def fan_ins(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    sent: list[tuple[str, str, str]] = []

    class _Sig:
        def __init__(self, run: str, step: str, task: str) -> None:
            self.entry = (run, step, task)

        def apply_async(self, **_: object) -> None:
            sent.append(self.entry)

    monkeypatch.setattr(
        dispatch,
        "step_signature",
        lambda snap, run, step, task="runbook.step": _Sig(run, step, task),
    )
    return sent


def test_an_instance_that_ended_without_handing_on_has_its_lane_and_join_done_again(
    store, published, fan_ins
):
    # Given instance m[0] of 2 (one lane) was recorded, and its worker died before it sent
    # m[1] (nothing but m[0]'s own watch says so)
    run = _fan_out_run(store, 2, 1)
    _ended_without_handing_on(store, run, "m[0]")
    # When the reconciler passes, then m[1] is sent, and watched from that transition on
    workerhooks.recover_once(store, store.r, 5)
    assert published == [(run, ["m[1]"])]
    assert store.r.zscore(store.keys.leases, f"{run}|m[1]") > store.server_time()
    assert store.r.zscore(store.keys.leases, f"{run}|m[0]") is None
    # Given the last instance ended the same way, when the reconciler passes, then the join
    # goes out as a fan-in message, and m is watched until it is joined
    store.r.delete(f"{store.keys.prefix}:recover:{run}|m[1]")
    _ended_without_handing_on(store, run, "m[1]")
    workerhooks.recover_once(store, store.r, 5)
    assert fan_ins == [(run, "m", "runbook.fan_in")]
    assert store.r.zscore(store.keys.leases, f"{run}|m") > store.server_time()


def test_a_join_due_whose_worker_was_lost_is_sent_as_a_fan_in(store, published, fan_ins):
    # Given every instance of m ended and the join was due (m watched), but the worker that
    # was to join them died: m is still running, and its watch ran out
    run = _fan_out_run(store, 2, 2)
    for step in ("m[0]", "m[1]"):
        _ended_without_handing_on(store, run, step)
        store.instance_ended(run, step, 30)
        store.r.zrem(store.keys.leases, f"{run}|{step}")
    assert store.r.zscore(store.keys.leases, f"{run}|m") is not None
    store.watch_steps([f"{run}|m"], -1)
    # When the reconciler passes, then the join goes out as a fan-in message
    workerhooks.recover_once(store, store.r, 5)
    assert fan_ins == [(run, "m", "runbook.fan_in")]
    assert published == []


class _StepTask:
    """What StepExecution needs of a Celery task to record and hand on."""

    name = "runbook.step"
    request = None


def test_a_join_refused_to_the_last_instance_leaves_it_to_the_watch_and_hands_the_instance_on(
    store, published, monkeypatch
):
    from runbook_celery.core.settings import get_settings
    from runbook_celery.engine.step.context import cache
    from runbook_celery.engine.step.delivery import StepExecution

    # Given the last instance of m has ended while another delivery of m holds m (a
    # redelivery of the fan-out, between its claim and its release)
    run = _fan_out_run(store, 1, 1)
    _ended_without_handing_on(store, run, "m[0]")
    store.r.hset(store.keys.step(run, "m"), "holder", "other")
    store.r.set(store.keys.lease(run, "m"), "other", ex=30)
    ctx = cache.get(store, run)
    execution = StepExecution(_StepTask(), get_settings(), store, ctx, run, "m[0]")  # type: ignore[arg-type]
    # When the instance hands on, then its join is refused (m is not recorded), but the
    # instance's own task goes on to hand on (no Ignore), and m stays watched for its join
    execution._instance_ended()
    assert execution.joined is None
    assert store.r.hget(store.keys.step(run, "m"), "status") == b"running"
    assert store.r.zscore(store.keys.leases, f"{run}|m") is not None


def test_a_lost_join_of_a_canvas_run_is_sent_as_its_kept_continuation(
    store, published, fan_ins, monkeypatch
):
    # Given a canvas run's fanned-out step m kept its join (the rest of its canvas in it),
    # every instance ended, and the worker that was to send the join died
    from runbook_celery.engine import canvasfanout

    sent: list[dict[str, object]] = []

    class _Kept:
        def __init__(self, message: dict[str, object]) -> None:
            self.message = message

        def apply_async(self, **_: object) -> None:
            sent.append(self.message)

    monkeypatch.setattr(canvasfanout.app, "signature", _Kept)
    run = _fan_out_run(store, 2, 2)
    kept = {"task": "runbook.fan_in", "args": [run, "m"], "options": {"chain": ["next"]}}
    store.keep_continuation(run, "m", kept)
    for step in ("m[0]", "m[1]"):
        _ended_without_handing_on(store, run, step)
        store.instance_ended(run, step, 30)
        store.r.zrem(store.keys.leases, f"{run}|{step}")
    store.watch_steps([f"{run}|m"], -1)
    # When the reconciler passes, then the kept join goes out (the canvas goes on from it)
    workerhooks.recover_once(store, store.r, 5)
    assert sent == [kept]
    assert fan_ins == [] and published == []
