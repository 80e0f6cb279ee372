"""The fencing contract of the store's transition scripts, on real Redis and on the store's
in-memory double.

A delivery that claimed a step holds it: its token is the step's holder at the step's
current attempt. Only the holder renews the lease (compare-and-set, never a takeover)
and records a result; another delivery takes the step over only once the lease has
expired; a refused write is kept as a ``step_result_discarded`` event.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from conftest import PREFIX
from own_redis import fill, own_redis

from runbook_celery.store import RunStore, Successor
from runbook_celery.store.events import StepStatus


@pytest.fixture
def rstore(store_client):  # type: ignore[no-untyped-def]
    """The store on real Redis, then on the in-memory double (``store_client``)."""
    return RunStore(store_client, prefix=f"{PREFIX}:fencing")


def _run(store: RunStore, steps: dict[str, list[str]] | None = None, **snap: object) -> str:
    run = uuid.uuid4().hex
    steps = steps or {"a": []}
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": "dynamic",
        "steps": [{"id": s, "needs": n} for s, n in steps.items()],
        **snap,
    }
    store.create_run(run, snapshot, "sha")
    return run


def _claim(store: RunStore, run: str, token: str, step: str = "a", **kw: object):  # type: ignore[no-untyped-def]
    return store.start_step(
        run,
        step,
        token=token,
        needs=[],
        output_steps=[],
        workflow="wf",
        lease_seconds=30,
        max_attempts=5,
        **kw,  # type: ignore[arg-type]
    )


def _finish(store: RunStore, run: str, token: str, attempt: int | None, **kw: object):  # type: ignore[no-untyped-def]
    return store.finish_step(
        run,
        "a",
        token=token,
        status=kw.pop("status", StepStatus.SUCCEEDED),  # type: ignore[arg-type]
        workflow="wf",
        attempt=attempt,
        **kw,  # type: ignore[arg-type]
    )


def _lapse(store: RunStore, run: str, step: str = "a") -> None:
    """The holder's lease ran out (its worker paused or cut off)."""
    store.r.delete(store.keys.lease(run, step))


def _types(store: RunStore, run: str) -> list[str]:
    return [e["type"] for _, e in store.events(run)]


def test_only_the_holder_renews_its_lease(rstore):
    run = _run(rstore)
    assert _claim(rstore, run, "one").attempt == 1
    assert rstore.refresh_lease(run, "a", "one", 1, 30) == (True, False)
    assert rstore.refresh_lease(run, "a", "two", 1, 30)[0] is False  # wrong token
    assert rstore.refresh_lease(run, "a", "one", 2, 30)[0] is False  # wrong attempt
    assert rstore.r.get(rstore.keys.lease(run, "a")) in (b"one", "one")


def test_renewal_reports_a_cancel_request(rstore):
    run = _run(rstore)
    _claim(rstore, run, "one")
    rstore.r.hset(rstore.keys.run(run), "cancel_requested", "1")
    assert rstore.refresh_lease(run, "a", "one", 1, 30) == (True, True)


def test_a_lapsed_lease_nobody_took_over_is_renewed_and_the_result_accepted(rstore):
    # Given the holder's lease key expired, and no other delivery started the step
    run = _run(rstore)
    _claim(rstore, run, "one")
    _lapse(rstore, run)
    # Then the holder may renew it (the same attempt is still current) and record its result
    assert rstore.refresh_lease(run, "a", "one", 1, 30) == (True, False)
    assert rstore.r.ttl(rstore.keys.lease(run, "a")) > 0
    _lapse(rstore, run)
    out = _finish(rstore, run, "one", 1)
    assert not out.superseded and not out.duplicate
    assert rstore.get_run(run).steps["a"].status == "succeeded"


def test_a_live_lease_keeps_another_delivery_out_and_a_lapsed_one_lets_it_take_over(rstore):
    run = _run(rstore)
    _claim(rstore, run, "one")
    assert _claim(rstore, run, "two").action == "busy"
    _lapse(rstore, run)
    d = _claim(rstore, run, "two")
    assert d.action == "start" and d.attempt == 2
    h = rstore.step_hashes(run, ["a"])["a"]
    assert h["holder"] == "two" and h["attempts"] == "2"


def test_a_superseded_delivery_cannot_renew_retake_or_record(rstore):
    # Given delivery one's lease lapsed and delivery two took the step over
    run = _run(rstore)
    _claim(rstore, run, "one")
    _lapse(rstore, run)
    _claim(rstore, run, "two")
    # Then one never renews (even after two's lease lapses too) ...
    assert rstore.refresh_lease(run, "a", "one", 1, 30)[0] is False
    _lapse(rstore, run)
    assert rstore.refresh_lease(run, "a", "one", 1, 30)[0] is False
    assert rstore.r.get(rstore.keys.lease(run, "a")) is None
    # ... and its result, retry, hand-back and release are refused and kept as events
    assert _finish(rstore, run, "one", 1, outputs={"who": "one"}).superseded
    retry = rstore.retry_step(
        run,
        "a",
        token="one",
        workflow="wf",
        attempt=1,
        exit_code=1,
        reason="exit_code",
        delay=1,
        history={},
        lease_seconds=30,
    )
    assert retry.superseded and not retry.done
    back = rstore.handback_step(
        run, "a", token="one", workflow="wf", attempt=1, reason="shutdown", lease_seconds=30
    )
    assert back.superseded
    assert not rstore.release_step(run, "a", "one", 1).done
    discarded = [e for _, e in rstore.events(run) if e["type"] == "step_result_discarded"]
    assert [(e["attempt"], e["current_attempt"]) for e in discarded] == [("1", "2")] * 3
    assert [e["status"] for e in discarded] == ["succeeded", "retrying", "handed_back"]
    # while two's result is the one recorded
    assert not _finish(rstore, run, "two", 2, outputs={"who": "two"}).superseded
    step = rstore.get_run(run).steps["a"]
    assert step.status == "succeeded" and step.outputs == {"who": "two"}


def test_a_late_result_after_another_delivery_finished_is_discarded(rstore):
    run = _run(rstore)
    _claim(rstore, run, "one")
    _lapse(rstore, run)
    _claim(rstore, run, "two")
    _finish(rstore, run, "two", 2, outputs={"who": "two"})
    late = _finish(rstore, run, "one", 1, status=StepStatus.FAILED, exit_code=1)
    assert late.superseded
    assert rstore.get_run(run).steps["a"].outputs == {"who": "two"}
    assert _types(rstore, run)[-1] == "step_result_discarded"


def test_the_holder_repeating_its_own_finish_gets_a_duplicate_not_a_discard(rstore):
    # a FINISH whose reply was lost (timeout) is safely sent again
    run = _run(rstore)
    _claim(rstore, run, "one")
    assert not _finish(rstore, run, "one", 1).duplicate
    again = _finish(rstore, run, "one", 1)
    assert again.duplicate and not again.superseded


def test_a_delivery_that_never_started_the_step_cannot_finish_it_under_a_live_lease(rstore):
    # e.g. a duplicate delivery whose if: condition became false after a cancel request
    run = _run(rstore)
    _claim(rstore, run, "one")
    assert _finish(rstore, run, "cond", None, status=StepStatus.SKIPPED).superseded
    # once the holder's lease has lapsed (its worker is gone), it may
    _lapse(rstore, run)
    assert not _finish(rstore, run, "cond", None, status=StepStatus.SKIPPED).superseded
    assert rstore.get_run(run).steps["a"].status == "skipped"


def test_a_message_for_a_step_or_instance_the_record_lacks_is_unknown(rstore):
    run = _run(rstore)
    assert _claim(rstore, run, "x", step="b[7]").action == "unknown"
    assert _claim(rstore, run, "x", step="nope").action == "unknown"
    out = rstore.finish_step(
        run, "b[7]", token="x", status=StepStatus.SUCCEEDED, workflow="wf", attempt=None
    )
    assert out.duplicate
    assert rstore.r.hget(rstore.keys.run(run), "remaining") in (b"1", "1")
    assert rstore.r.exists(rstore.keys.step(run, "b[7]")) == 0


def test_max_active_slots_are_step_ids_so_a_redelivery_keeps_its_own_slot(rstore):
    # Given max_active_steps 1 and step a holding the slot
    run = _run(rstore, {"a": [], "b": []})
    assert _claim(rstore, run, "one", max_active=1).action == "start"
    # When a's worker dies and a is delivered again
    _lapse(rstore, run)
    # Then the redelivery starts (it holds the slot it had), while b still waits for it
    assert _claim(rstore, run, "two", max_active=1).action == "start"
    assert _claim(rstore, run, "b1", step="b", max_active=1).action == "park"
    message = {"task": "runbook.step", "args": [run, "b"]}
    assert (
        _claim(rstore, run, "b1", step="b", max_active=1, park_message=message).action == "parked"
    )
    # and a's end frees the slot and lets b's parked message go, b pending and watched
    out = _finish(rstore, run, "two", 2)
    assert out.unparked == (message,)
    assert rstore.get_run(run).steps["b"].status == "pending"
    assert rstore.r.zscore(rstore.keys.leases, f"{run}|b") is not None
    assert rstore.r.scard(f"{rstore.keys.run(run)}:active") == 0


def test_a_gate_is_checked_and_the_step_parked_in_one_claim(rstore):
    run = _run(rstore)
    rstore.r.hset(rstore.keys.run(run), "paused", "1")
    assert _claim(rstore, run, "one").action == "park"
    message = {"task": "runbook.step", "args": [run, "a"]}
    # the gate opened between the two claims: the second one starts the step
    rstore.r.hset(rstore.keys.run(run), "paused", "0")
    d = _claim(rstore, run, "one", park_message=message)
    assert d.action == "start" and d.attempt == 1
    assert rstore.r.llen(f"{rstore.keys.run(run)}:parked") == 0


def test_hand_on_ends_the_watch_and_watches_successors_now_ready(rstore):
    run = _run(rstore, {"a": [], "b": [], "c": ["a", "b"], "d": ["a"]})
    for step in ("a", "b"):
        _claim(rstore, run, step, step=step)
    rstore.finish_step(
        run, "a", token="a", status=StepStatus.SUCCEEDED, workflow="wf", attempt=1,
        children={"c": 2, "d": 1},
    )  # fmt: skip
    rstore.hand_on(run, "a", [Successor("c", 2), Successor("d", 1)], 30)
    members = {m.decode() for m in rstore.r.zrange(rstore.keys.leases, 0, -1)}
    assert f"{run}|a" not in members and f"{run}|d" in members and f"{run}|c" not in members
    rstore.finish_step(
        run, "b", token="b", status=StepStatus.SUCCEEDED, workflow="wf", attempt=1,
        children={"c": 2},
    )  # fmt: skip
    rstore.hand_on(run, "b", [Successor("c", 2)], 30)
    members = {m.decode() for m in rstore.r.zrange(rstore.keys.leases, 0, -1)}
    assert f"{run}|c" in members and f"{run}|b" not in members


def _members(store: RunStore) -> set[str]:
    return {m.decode() for m in store.r.zrange(store.keys.leases, 0, -1)}


def test_a_fan_out_watches_its_first_window_in_the_transition_that_records_it(rstore):
    run = _run(rstore, {"m": []})
    rstore.add_instances(run, "m", [{"item": i} for i in range(5)], 2, watch_seconds=30)
    members = _members(rstore)
    assert {f"{run}|m[0]", f"{run}|m[1]"} <= members
    assert not {f"{run}|m[{i}]" for i in (2, 3, 4)} & members  # sent later, by their lanes
    # a broker whose messages cannot be looked for (AMQP): nothing is watched
    other = _run(rstore, {"m": []})
    rstore.add_instances(other, "m", [{"item": 1}], 1)
    assert not any(m.startswith(other) for m in _members(rstore))
    # a run being cancelled: its instances are cancelled, not sent, so not watched
    cancelled = _run(rstore, {"m": []})
    rstore.r.hset(rstore.keys.run(cancelled), "cancel_requested", "1")
    rstore.add_instances(cancelled, "m", [{"item": 1}], 1, watch_seconds=30)
    assert not any(m.startswith(cancelled) for m in _members(rstore))


def _end_instance(store: RunStore, run: str, step: str) -> tuple[str | None, bool]:
    _claim(store, run, step, step=step)
    store.finish_step(run, step, token=step, status=StepStatus.SUCCEEDED, workflow="wf", attempt=1)
    store.hand_on(run, step, [], 30)
    return store.instance_ended(run, step, 30)


def test_an_instance_that_ends_watches_its_lanes_next_instance_and_the_due_join(rstore):
    # Given a fanned-out step m (released by its delivery) with 3 instances in 2 lanes
    run = _run(rstore, {"m": []})
    d = _claim(rstore, run, "m", step="m")
    rstore.add_instances(run, "m", [{"item": i} for i in range(3)], 2, watch_seconds=30)
    assert rstore.release_step(run, "m", "m", d.attempt).done
    rstore.hand_on(run, "m", [], 30)
    # When m[0] ends, then m[2] is due and watched in that same transition
    assert _end_instance(rstore, run, "m[0]") == ("m[2]", False)
    assert f"{run}|m[2]" in _members(rstore)
    assert _end_instance(rstore, run, "m[1]") == (None, False)
    assert f"{run}|m" not in _members(rstore)
    # When the last one ends, then the join is due and m is watched until it is joined
    assert _end_instance(rstore, run, "m[2]") == (None, True)
    assert f"{run}|m" in _members(rstore)
    # A replay of m[0] once m[2] has ended and handed on sends and watches nothing again:
    # not m[2], and not the join either (m's watch, kept, is what finds a lost join; a
    # join due to every replay was a join per queued instance message after a cancel)
    assert rstore.instance_ended(run, "m[0]", 30) == (None, False)
    assert f"{run}|m[2]" not in _members(rstore)
    assert f"{run}|m" in _members(rstore)


def test_a_join_recorded_by_the_last_instance_hands_on_with_that_instance(rstore):
    # Given the last instance of m joined m (recorded it) and m's child z is now ready
    run = _run(rstore, {"m": [], "z": ["m"]})
    d = _claim(rstore, run, "m", step="m")
    rstore.add_instances(run, "m", [{"item": 0}], 1, watch_seconds=30)
    rstore.release_step(run, "m", "m", d.attempt)
    rstore.hand_on(run, "m", [], 30)
    assert _end_instance(rstore, run, "m[0]")[1]
    rstore.watch_steps([f"{run}|m[0]"], 30)  # the instance's entry, until it hands on
    out = rstore.finish_step(
        run, "m", token="join", status=StepStatus.SUCCEEDED, workflow="wf",
        children={"z": 1}, watch_seconds=30,
    )  # fmt: skip
    # Then z is watched by the join itself, before anything is published
    assert out.ready == ("z",) and f"{run}|z" in _members(rstore)
    # When the instance's task hands on, m's entry ends with the instance's
    rstore.hand_on(run, "m[0]", [Successor("z", 1)], 30, ended=["m"])
    members = _members(rstore)
    assert f"{run}|m[0]" not in members and f"{run}|m" not in members
    assert f"{run}|z" in members


def test_finish_watches_the_dynamic_children_it_makes_ready_only_when_asked(rstore):
    run = _run(rstore, {"a": [], "b": ["a"], "c": ["a"]})
    _claim(rstore, run, "one")
    out = _finish(rstore, run, "one", 1, children={"b": 1, "c": 1}, watch_seconds=30)
    assert set(out.ready) == {"b", "c"}
    assert {f"{run}|b", f"{run}|c"} <= _members(rstore)
    other = _run(rstore, {"a": [], "b": ["a"]})
    _claim(rstore, other, "one")
    assert _finish(rstore, other, "one", 1, children={"b": 1}).ready == ("b",)
    assert f"{other}|b" not in _members(rstore)


# Real Redis only: the double has no memory limit to fill.
def test_the_holder_renews_its_lease_and_watch_on_a_full_redis():
    """A full Redis (noeviction) refuses SET and ZADD as a script's first write; the
    renewal's first write is a PEXPIRE, so the lease and the watch are both renewed."""
    with own_redis("--maxmemory-policy", "noeviction") as url:
        store = RunStore(redis.Redis.from_url(url), prefix="full")
        run = _run(store)
        assert _claim(store, run, "one").action == "start"
        store.r.expire(store.keys.lease(run, "a"), 5)
        store.r.zadd(store.keys.leases, {f"{run}|a": 0})
        store.r.config_set("maxmemory", int(store.r.info("memory")["used_memory"]) + 256 * 1024)
        fill(url)
        with pytest.raises(redis.OutOfMemoryError):
            store.r.set("probe", "x")  # Redis is full
        assert store.refresh_lease(run, "a", "one", 1, 30) == (True, False)
        assert store.r.ttl(store.keys.lease(run, "a")) > 25
        assert store.r.zscore(store.keys.leases, f"{run}|a") > store.server_time() + 25
        # a lease key that expired has to be set again: refused whole, nothing changed
        store.r.delete(store.keys.lease(run, "a"))
        with pytest.raises(redis.OutOfMemoryError):
            store.refresh_lease(run, "a", "one", 1, 30)
        assert store.r.exists(store.keys.lease(run, "a")) == 0
