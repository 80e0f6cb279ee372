"""A transition script that cannot complete changes nothing (on real Redis and on the
in-memory double: Lua does not roll back, so every script checks what could make it fail
before its first write).

The failures provoked here need a record that is not what our scripts write (a counter
that is not an integer, a key of the wrong type, arguments out of range): they stand for
any error Redis raises halfway through a script.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from conftest import PREFIX

from runbook_celery.store import RunStore
from runbook_celery.store.events import StepStatus

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def rstore(store_client):  # type: ignore[no-untyped-def]
    """The store on real Redis, then on the in-memory double (``store_client``), which
    keeps a failed script's earlier writes as Redis does (no rollback)."""
    return RunStore(store_client, prefix=f"{PREFIX}:atomic")


def _run(store: RunStore, steps: dict[str, list[str]], mode: str = "dynamic") -> str:
    run = uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": mode,
        "steps": [{"id": s, "needs": n} for s, n in steps.items()],
    }
    store.create_run(run, snapshot, "sha")
    return run


def _claim(store: RunStore, run: str, step: str = "a", token: str = "t", **kw: Any):  # type: ignore[no-untyped-def]
    return store.start_step(
        run,
        step,
        token=token,
        needs=[],
        output_steps=[],
        workflow="wf",
        lease_seconds=30,
        max_attempts=kw.pop("max_attempts", 5),
        **kw,
    )


def _state(store: RunStore, run: str, steps: list[str]) -> dict[str, Any]:
    """Everything of the run a transition may write, to compare before and after."""
    k = store.keys
    r = store.r
    out: dict[str, Any] = {
        "run": r.hgetall(k.run(run)),
        "events": r.xlen(k.run_events(run)),
        "active": r.smembers(f"{k.run(run)}:active"),
        "parked": r.lrange(f"{k.run(run)}:parked", 0, -1),
        "leases": {m for m in r.zrange(k.leases, 0, -1) if m.decode().startswith(run)},
    }
    for s in steps:
        out[s] = (r.hgetall(k.step(run, s)), r.get(k.lease(run, s)), r.type(k.arrived(run, s)))
        if r.type(k.arrived(run, s)) == b"set":
            out[f"arrived {s}"] = r.smembers(k.arrived(run, s))
    return out


def test_a_claim_that_cannot_count_its_attempt_changes_nothing(rstore):
    # Given a step whose attempt counter is not a number
    run = _run(rstore, {"a": []})
    rstore.r.hset(rstore.keys.step(run, "a"), "attempts", "x")
    before = _state(rstore, run, ["a"])
    # When a delivery claims it (with a max_active_steps slot to take), then it fails ...
    with pytest.raises(redis.ResponseError):
        _claim(rstore, run, max_active=1)
    # ... and nothing was written: no delivery counted, no slot, no lease, no watch
    assert _state(rstore, run, ["a"]) == before


def test_a_claim_of_an_exhausted_step_takes_no_slot(rstore):
    run = _run(rstore, {"a": []})
    for i in range(2):
        assert _claim(rstore, run, token=f"t{i}", max_attempts=2, max_active=2).action == "start"
        rstore.r.delete(rstore.keys.lease(run, "a"))  # its worker died
    d = _claim(rstore, run, token="t9", max_attempts=2, max_active=2)
    assert d.action == "exhausted"
    assert rstore.r.smembers(f"{rstore.keys.run(run)}:active") == {b"a"}  # the step's own


def test_a_finish_that_cannot_count_the_run_down_changes_nothing(rstore):
    run = _run(rstore, {"a": [], "b": ["a"]})
    assert _claim(rstore, run).action == "start"
    rstore.r.hset(rstore.keys.run(run), "remaining", "x")
    before = _state(rstore, run, ["a", "b"])
    with pytest.raises(redis.ResponseError):
        rstore.finish_step(
            run, "a", token="t", status=StepStatus.FAILED, workflow="wf", attempt=1,
            skip=["b"], children={"b": 1},
        )  # fmt: skip
    assert _state(rstore, run, ["a", "b"]) == before


def test_a_finish_that_cannot_join_a_child_changes_nothing(rstore):
    run = _run(rstore, {"a": [], "b": ["a"]})
    assert _claim(rstore, run).action == "start"
    rstore.r.set(rstore.keys.arrived(run, "b"), "not a set")
    before = _state(rstore, run, ["a", "b"])
    with pytest.raises(redis.ResponseError):
        rstore.finish_step(
            run, "a", token="t", status=StepStatus.SUCCEEDED, workflow="wf", attempt=1,
            children={"b": 1}, watch_seconds=30,
        )  # fmt: skip
    assert _state(rstore, run, ["a", "b"]) == before


def test_a_hand_back_that_cannot_uncount_the_delivery_changes_nothing(rstore):
    run = _run(rstore, {"a": []})
    assert _claim(rstore, run, max_active=1).action == "start"
    rstore.r.hset(rstore.keys.step(run, "a"), "deliveries", "x")
    before = _state(rstore, run, ["a"])
    with pytest.raises(redis.ResponseError):
        rstore.handback_step(
            run, "a", token="t", workflow="wf", attempt=1, reason="shutdown", lease_seconds=30
        )
    assert _state(rstore, run, ["a"]) == before


def test_a_retry_with_a_bad_lease_period_changes_nothing(rstore):
    run = _run(rstore, {"a": []})
    assert _claim(rstore, run, max_active=1).action == "start"
    before = _state(rstore, run, ["a"])
    with pytest.raises(redis.ResponseError):
        rstore._retry(
            keys=rstore.keys.transition(run, "a"),
            args=[run, "a", "t", "now", "wf", 1, 3, "exit_code", "1", "{}", "soon"],
        )
    assert _state(rstore, run, ["a"]) == before


def test_a_fail_over_given_a_child_out_of_range_changes_nothing(rstore):
    run = _run(rstore, {"a": [], "b": ["a"]}, mode="canvas")
    k = rstore.keys
    keys = [k.run(run), k.step(run, "a"), k.step(run, "b"), k.arrived(run, "a"),
            k.arrived(run, "b")]  # fmt: skip
    rstore.r.hset(k.step(run, "a"), "status", "succeeded")
    before = _state(rstore, run, ["a", "b"])
    with pytest.raises(redis.ResponseError):
        rstore._fail_over(keys=keys, args=[json.dumps([[2, 7], []]), "a", "b", 30])
    assert _state(rstore, run, ["a", "b"]) == before
    assert rstore.run_mode(run) == "canvas"


def test_a_cancel_that_cannot_count_the_run_down_changes_no_step(rstore):
    run = _run(rstore, {"a": [], "b": ["a"]})
    rstore.r.hset(rstore.keys.run(run), "remaining", "1.5")  # a number, but no integer
    with pytest.raises(redis.ResponseError):
        rstore.cancel_run(run)
    for step in ("a", "b"):
        assert rstore.r.hget(rstore.keys.step(run, step), "status") == b"pending"


def test_a_fan_out_that_cannot_count_its_instances_records_none(rstore):
    run = _run(rstore, {"m": []})
    rstore.r.hset(rstore.keys.run(run), "instance_count", "x")
    before = _state(rstore, run, ["m"])
    with pytest.raises(redis.ResponseError):
        rstore.add_instances(run, "m", [{"item": 1}, {"item": 2}], 1, watch_seconds=30)
    assert _state(rstore, run, ["m"]) == before
    assert not rstore.r.exists(rstore.keys.step(run, "m[0]"))
