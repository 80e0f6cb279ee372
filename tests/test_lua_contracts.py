"""Each Lua script (runbook_celery/store/lua/*.lua), on real Redis and on the store's
in-memory double (the same scripts on fakeredis): its main transition, and what it refuses
(a refusal changes nothing but what its header says).

The scripts are driven through the store methods that call them where there is one, else
directly (``RunStore._<name>``), with the KEYS and ARGV their headers declare. Every test
uses its own run ids under this session's prefix; the kombu test its own queue.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
import uuid
from importlib.resources import files
from itertools import takewhile
from typing import Any

import pytest
import redis
from conftest import PREFIX, ROOT, SESSION, TEST_REDIS_URL
from kombu import Connection, Exchange, Queue

from runbook_celery.client.run import Run
from runbook_celery.core.errors import InvalidOperation
from runbook_celery.engine import recovery
from runbook_celery.store import ChainLink, Decision, RunStore, Successor
from runbook_celery.store.events import StepStatus
from runbook_celery.store.gates import Gates
from runbook_celery.store.scripts import LIBRARIES, PARTS, read, source

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def st(store_client: redis.Redis) -> RunStore:
    """The store on real Redis, then on the in-memory double (``store_client``)."""
    return RunStore(store_client, prefix=f"{PREFIX}:lua")


def _run(store: RunStore, steps: dict[str, list[str]], **extra: str) -> str:
    run = uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": "dynamic",
        "steps": [{"id": s, "needs": n} for s, n in steps.items()],
    }
    store.create_run(run, snapshot, "sha", **extra)
    return run


def _claim(store: RunStore, run: str, step: str = "a", token: str = "t", **kw: Any) -> Any:
    return store.start_step(
        run,
        step,
        token=token,
        needs=kw.pop("needs", []),
        output_steps=[],
        workflow="wf",
        lease_seconds=30,
        max_attempts=kw.pop("max_attempts", 5),
        **kw,
    )


def _finish(store: RunStore, run: str, step: str, status: StepStatus, **kw: Any) -> Any:
    kw.setdefault("token", "t")
    kw.setdefault("attempt", 1)
    return store.finish_step(run, step, status=status, workflow="wf", **kw)


def _step(store: RunStore, run: str, step: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in store.r.hgetall(store.keys.step(run, step)).items()}


def _run_hash(store: RunStore, run: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in store.r.hgetall(store.keys.run(run)).items()}


def _types(store: RunStore, run: str) -> list[str]:
    return [f["type"] for _, f in store.events(run)]


def _watched(store: RunStore, run: str, step: str) -> bool:
    return store.r.zscore(store.keys.leases, f"{run}|{step}") is not None


# ------------------------------------------------------------------ the files themselves


def test_every_script_file_has_a_header_naming_keys_argv_returns_and_derived_keys() -> None:
    for name in PARTS:
        lines = read(name).splitlines()
        header = "\n".join(takewhile(lambda line: line.startswith("--"), lines))
        for word in ("KEYS", "ARGV", "Returns", "Keys derived, not declared"):
            assert word in header, f"{name}.lua: header lacks {word!r}"


def test_every_lua_file_is_used_and_ships_as_package_data() -> None:
    shipped = files("runbook_celery.store").joinpath("lua")
    names = {p.name.removesuffix(".lua") for p in shipped.iterdir() if p.name.endswith(".lua")}
    assert names == set(PARTS) | set(LIBRARIES)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "store/lua/*.lua" in pyproject["tool"]["setuptools"]["package-data"]["runbook_celery"]


def test_a_script_is_its_libraries_then_its_own_file() -> None:
    claim = source("claim")
    assert claim.startswith("local RUN_EVENTS_MAXLEN = 100000\n")
    assert claim.index("local function finalize") < claim.index(read("claim"))
    assert source("drop_expired") == read("drop_expired")  # no library: the file alone


# ------------------------------------------------------------------ claim.lua


def test_claim_makes_the_delivery_holder_with_a_lease_a_watch_and_events(st: RunStore) -> None:
    run = _run(st, {"a": []})
    d = _claim(st, run, token="t1")
    assert (d.action, d.attempt) == ("start", 1)
    step = _step(st, run, "a")
    assert (step["status"], step["holder"], step["attempts"]) == ("running", "t1", "1")
    assert st.r.get(st.keys.lease(run, "a")) == b"t1"
    assert _watched(st, run, "a")
    assert _run_hash(st, run)["status"] == "running"
    assert _types(st, run) == ["workflow_started", "step_started"]


@pytest.mark.parametrize(
    ("run_fields", "outcome"),
    [
        ({}, "succeeded"),
        ({"failures": "2"}, "failed"),
        ({"cancel_requested": "1", "cancel_reason": "timeout"}, "failed"),
        ({"cancel_requested": "1", "cancel_reason": "operator"}, "cancelled"),
    ],
)
def test_claim_answers_the_runs_outcome_so_far_by_run_status_so_fars_rule(
    st: RunStore, run_fields: dict[str, str], outcome: str
) -> None:
    # run.status / $RUNBOOK_RUN_STATUS come with the claim (no read of their own)
    run = _run(st, {"a": []})
    if run_fields:
        st.r.hset(st.keys.run(run), mapping=run_fields)
    expected = st.run_status_so_far(run)
    decision = _claim(st, run, ignore_cancel=True)
    assert decision.action == "start"
    assert decision.run_status == expected == outcome


def test_claim_refuses_while_another_delivery_holds_a_live_lease(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run, token="t1")
    before = (_step(st, run, "a"), len(_types(st, run)))
    d = _claim(st, run, token="t2")
    assert (d.action, d.status) == ("busy", None)
    assert (_step(st, run, "a"), len(_types(st, run))) == before


def test_claim_parks_a_step_a_gate_holds_in_the_same_transition(st: RunStore) -> None:
    run = _run(st, {"a": []})
    assert _claim(st, run, needs_approval=True).action == "park"  # no message: asks for it
    d = _claim(st, run, needs_approval=True, park_message={"args": [run, "a"]})
    assert (d.action, d.status) == ("parked", "approval")
    assert _step(st, run, "a")["status"] == "awaiting_approval"
    assert not st.r.exists(st.keys.lease(run, "a"))


# ------------------------------------------------------------------ renew.lua


def test_renew_extends_the_holders_lease_and_reports_a_cancel(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    st.r.expire(st.keys.lease(run, "a"), 5)
    st.r.hset(st.keys.run(run), "cancel_requested", "1")
    assert st.refresh_lease(run, "a", "t", 1, 60) == (True, True)
    assert st.r.ttl(st.keys.lease(run, "a")) > 30


def test_renew_refuses_a_superseded_delivery_and_leaves_the_lease(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run, token="t1")
    ttl = st.r.ttl(st.keys.lease(run, "a"))
    assert st.refresh_lease(run, "a", "t0", 1, 300) == (False, False)
    assert st.refresh_lease(run, "a", "t1", 2, 300) == (False, False)  # not its attempt
    assert st.r.get(st.keys.lease(run, "a")) == b"t1"
    assert st.r.ttl(st.keys.lease(run, "a")) <= ttl


# ------------------------------------------------------------------ finish.lua and finalize


def test_finish_records_the_holders_result_and_joins_a_ready_child(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    out = _finish(st, run, "a", StepStatus.SUCCEEDED, children={"b": 1}, watch_seconds=30)
    assert (out.duplicate, out.remaining, out.ready, out.run_status) == (False, 1, ("b",), None)
    assert _step(st, run, "a")["status"] == "succeeded"
    assert "holder" not in _step(st, run, "a")
    assert not st.r.exists(st.keys.lease(run, "a"))
    assert st.r.smembers(st.keys.arrived(run, "b")) == {b"a"}
    assert _watched(st, run, "b")


def test_finish_refuses_a_superseded_delivery_and_keeps_its_result_as_an_event(
    st: RunStore,
) -> None:
    run = _run(st, {"a": []})
    _claim(st, run, token="t1")
    st.r.delete(st.keys.lease(run, "a"))  # t1's worker died
    _claim(st, run, token="t2")
    out = _finish(st, run, "a", StepStatus.FAILED, token="t1", attempt=1)
    assert out.superseded
    assert _step(st, run, "a")["status"] == "running"
    assert _run_hash(st, run)["remaining"] == "1"
    assert _types(st, run)[-1] == "step_result_discarded"


def test_finalize_ends_a_run_exactly_once_with_its_final_status(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": []})
    _claim(st, run, "a")
    _claim(st, run, "b")
    assert _finish(st, run, "a", StepStatus.FAILED).run_status is None
    ended = _finish(st, run, "b", StepStatus.SUCCEEDED)
    assert ended.run_status == "failed"  # a failure not allowed: the run failed
    again = _finish(st, run, "b", StepStatus.SUCCEEDED)
    assert again.duplicate
    assert _types(st, run).count("workflow_failed") == 1
    assert not any(t in _types(st, run) for t in ("workflow_succeeded", "workflow_cancelled"))
    h = _run_hash(st, run)
    assert (h["status"], h["remaining"]) == ("failed", "0")
    assert st.r.ttl(st.keys.run(run)) > 0  # finalize set the retention


def test_finalize_is_reached_once_when_the_last_steps_finish_at_the_same_moment(
    st: RunStore,
) -> None:
    steps = [f"s{i}" for i in range(8)]
    run = _run(st, {s: [] for s in steps})
    for s in steps:
        _claim(st, run, s)
    results: list[Any] = []
    barrier = threading.Barrier(len(steps))

    def finish(step: str) -> None:
        barrier.wait()
        results.append(_finish(st, run, step, StepStatus.SUCCEEDED).run_status)

    threads = [threading.Thread(target=finish, args=(s,)) for s in steps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("succeeded") == 1 and results.count(None) == 7
    assert _types(st, run).count("workflow_succeeded") == 1


def test_finalize_never_ends_a_run_twice_even_when_its_count_goes_below_zero(
    st: RunStore,
) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    assert _finish(st, run, "a", StepStatus.SUCCEEDED).run_status == "succeeded"
    st.r.hset(st.keys.step(run, "a"), "status", "pending")  # a record someone rewrote
    out = _finish(st, run, "a", StepStatus.FAILED, token="late", attempt=None)
    assert (out.remaining, out.run_status) == (-1, None)
    assert _run_hash(st, run)["status"] == "succeeded"
    assert [x for x in _types(st, run) if x.startswith("workflow_")] == [
        "workflow_started",
        "workflow_succeeded",
    ]


def test_finalize_writes_one_end_entry_that_a_waiter_blocks_on_until_the_run_ends(
    st: RunStore,
) -> None:
    run = _run(st, {"a": [], "b": []})
    _claim(st, run, "a")
    _claim(st, run, "b")
    assert st.await_end(run, block_ms=1) is None  # running: nothing to wake for
    _finish(st, run, "a", StepStatus.SUCCEEDED)
    assert st.await_end(run, block_ms=1) is None  # a step's events do not end the wait
    _finish(st, run, "b", StepStatus.FAILED)
    assert st.await_end(run, block_ms=1) == "failed"
    _finish(st, run, "b", StepStatus.FAILED)  # a duplicate finish writes no second entry
    assert st.r.xlen(st.keys.run_ended(run)) == 1
    assert 0 < st.r.ttl(st.keys.run_ended(run)) <= st.r.ttl(st.keys.run(run))


# On real Redis only: fakeredis at the low end of its range (2.31) answers a blocking XREAD
# at once, blocking for nothing (runbook_celery/store/memory.py lists it); only a server
# that blocks can show that a waiter wakes once.
def test_run_wait_wakes_once_when_the_run_ends_not_for_each_step_event(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = RunStore(redis_client, prefix=f"{PREFIX}:lua")
    steps = [f"s{i}" for i in range(20)]
    run = _run(st, {s: [] for s in steps})
    for s in steps:
        _claim(st, run, s)
    waiter = Run(run)
    waiter.store = st
    wakes: list[tuple[str | None, float]] = []
    blocking_read = st.await_end

    def counted(run_id: str, block_ms: int) -> str | None:
        began = time.monotonic()
        out = blocking_read(run_id, block_ms)
        wakes.append((out, time.monotonic() - began))
        return out

    monkeypatch.setattr(st, "await_end", counted)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(record=waiter.wait(timeout=20)))
    thread.start()
    for s in steps:  # 60 events (claimed already: finished, its output, the final one)
        _finish(st, run, s, StepStatus.SUCCEEDED)
    thread.join(25)
    assert outcome["record"].status == "succeeded"
    assert len(st.events(run)) > 40
    assert wakes[-1][0] == "succeeded"
    # any earlier wake was the once-a-second status check, never a step's event
    assert all(out is None and took >= 0.9 for out, took in wakes[:-1]), wakes


def test_a_skipped_run_also_writes_its_end_entry(st: RunStore) -> None:
    run = _run(st, {"a": []})
    st.skip_run(run, "concurrency group full")
    assert st.await_end(run, block_ms=1) == "skipped"
    assert st.r.ttl(st.keys.run_ended(run)) > 0


def test_finalize_of_a_run_cancelled_for_its_timeout_says_failed(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    st.cancel_run(run, reason="timeout")
    assert _finish(st, run, "a", StepStatus.CANCELLED).run_status == "failed"
    assert _types(st, run)[-1] == "workflow_failed"


def test_finalize_of_a_run_a_worker_could_not_read_says_failed(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": []})
    _claim(st, run)
    st.cancel_run(run, reason="unsupported_snapshot")  # tasks: a newer release's snapshot
    assert _step(st, run, "b")["reason"] == "unsupported_snapshot"
    assert _finish(st, run, "a", StepStatus.CANCELLED).run_status == "failed"
    assert _types(st, run)[-1] == "workflow_failed"


# ------------------------------------------------------------------ retry / handback / release


def test_retry_leaves_the_step_retrying_and_watched(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    out = st.retry_step(
        run, "a", token="t", workflow="wf", attempt=1, exit_code=3, reason="exit_code",
        delay=1.5, history={"attempt": 1}, lease_seconds=30,
    )  # fmt: skip
    assert (out.done, out.superseded) == (True, False)
    step = _step(st, run, "a")
    assert (step["status"], "holder" in step) == ("retrying", False)
    assert json.loads(step["history"]) == [{"attempt": 1}]
    assert _watched(st, run, "a")
    assert _types(st, run)[-1] == "step_retrying"


def test_retry_refuses_a_delivery_that_does_not_hold_the_step(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    out = st.retry_step(
        run, "a", token="other", workflow="wf", attempt=1, exit_code=3, reason="exit_code",
        delay=1, history={}, lease_seconds=30,
    )  # fmt: skip
    assert (out.done, out.superseded) == (False, True)
    assert _step(st, run, "a")["status"] == "running"
    assert _types(st, run)[-1] == "step_result_discarded"


def test_handback_makes_the_step_pending_with_its_attempt_uncounted(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    out = st.handback_step(
        run, "a", token="t", workflow="wf", attempt=1, reason="shutdown", lease_seconds=30
    )
    assert out.done
    step = _step(st, run, "a")
    assert (step["status"], step["attempts"], step["deliveries"]) == ("pending", "0", "0")
    assert not st.r.exists(st.keys.lease(run, "a"))
    assert _types(st, run)[-1] == "step_handed_back"


def test_handback_refuses_a_stale_attempt(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    out = st.handback_step(
        run, "a", token="t", workflow="wf", attempt=7, reason="shutdown", lease_seconds=30
    )
    assert out.superseded
    assert _step(st, run, "a")["attempts"] == "1"


def test_release_lets_go_of_holder_lease_and_slot_and_hands_on_a_parked_step(
    st: RunStore,
) -> None:
    run = _run(st, {"a": [], "b": []})
    _claim(st, run, "a", max_active=1)
    parked = {"args": [run, "b"]}
    assert _claim(st, run, "b", token="tb", max_active=1, park_message=parked).action == "parked"
    out = st.release_step(run, "a", "t", 1)
    assert (out.done, out.unparked) == (True, (parked,))
    assert "holder" not in _step(st, run, "a")
    assert not st.r.exists(st.keys.lease(run, "a"))
    assert _step(st, run, "b")["status"] == "pending"  # unparked: to be published again


def test_release_refuses_a_delivery_that_does_not_hold_the_step(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    assert not st.release_step(run, "a", "other", 1).done
    assert _step(st, run, "a")["holder"] == "t"


# ------------------------------------------------------------------ hand on, watch, drop


def test_hand_on_stops_watching_the_step_and_watches_its_ready_successors(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"], "c": ["a", "x"]})
    st.watch_steps([f"{run}|a"], 30)
    st.r.sadd(st.keys.arrived(run, "b"), "a")
    st.r.sadd(st.keys.arrived(run, "c"), "a")
    st.hand_on(run, "a", [Successor("b", 1), Successor("c", 2)], 30)
    assert not _watched(st, run, "a")
    assert _watched(st, run, "b")
    assert not _watched(st, run, "c")  # one of its two needs has not finished


def test_hand_on_with_a_bad_period_writes_nothing(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    st.watch_steps([f"{run}|a"], 30)
    with pytest.raises(redis.ResponseError):
        st._hand_on(
            keys=[st.keys.leases, st.keys.step(run, "b"), st.keys.arrived(run, "b")],
            args=[f"{run}|a", "soon", 1, f"{run}|b", 0, 0],
        )
    assert _watched(st, run, "a")


def test_store_result_writes_celerys_result_and_hands_on_together(st: RunStore) -> None:
    run = _run(st, {"a": []})
    key = f"{PREFIX}:lua:result:{run}"
    st.watch_steps([f"{run}|a"], 30)
    st.hand_on(run, "a", [], 30, result=(key, '{"status": "SUCCESS"}', 60))
    assert st.r.get(key) == b'{"status": "SUCCESS"}'
    assert 0 < st.r.ttl(key) <= 60
    assert not _watched(st, run, "a")


def test_store_result_never_replaces_a_stored_success_but_still_hands_on(st: RunStore) -> None:
    # Celery's rule (a lost delivery's late result never replaces SUCCESS), kept in the
    # script now that the backend no longer reads the result before writing it
    run = _run(st, {"a": []})
    key = f"{PREFIX}:lua:result:{run}"
    st.r.set(key, '{"status": "SUCCESS", "result": 1}')
    st.watch_steps([f"{run}|a"], 30)
    st.hand_on(run, "a", [], 30, result=(key, '{"status": "FAILURE", "result": 2}', 60))
    assert st.r.get(key) == b'{"status": "SUCCESS", "result": 1}'
    assert not _watched(st, run, "a")


def test_store_result_replaces_a_stored_state_other_than_success(st: RunStore) -> None:
    run = _run(st, {"a": []})
    key = f"{PREFIX}:lua:result:{run}"
    for stored in ('{"status": "FAILURE"}', '{"status": "RETRY"}', "not json"):
        st.r.set(key, stored)
        st.hand_on(run, "a", [], 30, result=(key, '{"status": "SUCCESS"}', 60))
        assert st.r.get(key) == b'{"status": "SUCCESS"}'


def test_store_result_with_a_bad_period_stores_no_result(st: RunStore) -> None:
    run = _run(st, {"a": []})
    key = f"{PREFIX}:lua:result:{run}"
    with pytest.raises(redis.ResponseError):
        st._store_result(keys=[key, st.keys.leases], args=["v", 0, f"{run}|a", "soon", 0, 0])
    assert not st.r.exists(key)


# ------------------------------------------------------------------ finish_hand_on.lua


def _link(st: RunStore, run: str, successors: tuple[Successor, ...] = ()) -> ChainLink:
    return ChainLink(
        result_key=f"{PREFIX}:lua:result:{run}",
        result_value='{"status": "SUCCESS", "result": {"step": "a"}}',
        result_expires=60,
        queue_key=f"{PREFIX}:lua:queue:{run}",
        payload='{"body": "next link"}',
        successors=successors,
    )


def test_finish_hand_on_records_stores_the_result_pushes_the_next_link_and_hands_on(
    st: RunStore,
) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    link = _link(st, run, (Successor("b", 1),))
    out = _finish(
        st, run, "a", StepStatus.SUCCEEDED, children={"b": 1}, watch_seconds=30, link=link
    )
    assert out.recorded and out.remaining == 1
    assert _step(st, run, "a")["status"] == "succeeded"
    assert st.r.get(link.result_key) == link.result_value.encode()
    assert 0 < st.r.ttl(link.result_key) <= 60
    assert st.r.lrange(link.queue_key, 0, -1) == [link.payload.encode()]
    assert not _watched(st, run, "a")  # handed on: the next link is watched instead
    assert _watched(st, run, "b")


def test_finish_hand_on_of_a_duplicate_pushes_and_stores_nothing(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    _finish(st, run, "a", StepStatus.SUCCEEDED)
    link = _link(st, run, (Successor("b", 1),))
    out = _finish(st, run, "a", StepStatus.SUCCEEDED, watch_seconds=30, link=link)
    assert out.duplicate and not out.recorded
    assert not st.r.exists(link.result_key)
    assert not st.r.exists(link.queue_key)


def test_finish_hand_on_of_a_superseded_delivery_pushes_and_stores_nothing(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run, token="t1")
    st.r.delete(st.keys.lease(run, "a"))  # t1's worker died
    _claim(st, run, token="t2")
    link = _link(st, run, (Successor("b", 1),))
    out = _finish(st, run, "a", StepStatus.SUCCEEDED, token="t1", watch_seconds=30, link=link)
    assert out.superseded and not out.recorded
    assert _step(st, run, "a")["status"] == "running"
    assert not st.r.exists(link.result_key)
    assert not st.r.exists(link.queue_key)
    assert _types(st, run)[-1] == "step_result_discarded"


def test_finish_hand_on_with_bad_extra_counts_writes_nothing(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    link = _link(st, run)
    keys, args = st._link_arguments(run, "a", link, 30)
    finish_keys = [*st.keys.transition(run, "a")]
    finish_args = [
        run,
        "a",
        "t",
        "now",
        "succeeded",
        0,
        "",
        "",
        "",
        0,
        "wf",
        1,
        0,
        0,
        30,
        "",
        "",
        "",
        "",
    ]
    with pytest.raises(redis.ResponseError):  # one extra argument counted too few
        st._finish_hand_on(
            keys=[*finish_keys, *keys],
            args=[*finish_args, *args, len(args) - 1, len(keys)],
        )
    assert _step(st, run, "a")["status"] == "running"
    assert not st.r.exists(link.result_key)
    assert not st.r.exists(link.queue_key)


# ------------------------------------------------------------------ finish_send.lua


def _sends(run: str, children: list[str]) -> dict[str, tuple[str, str]]:
    return {c: (f"{PREFIX}:lua:queue:{run}:{c}", f'{{"step": "{c}"}}') for c in children}


def test_finish_send_pushes_the_messages_of_the_children_it_makes_ready(st: RunStore) -> None:
    run = _run(st, {"a": [], "x": [], "b": ["a"], "c": ["a", "x"]})
    _claim(st, run)
    sends = _sends(run, ["b", "c"])
    out = _finish(
        st,
        run,
        "a",
        StepStatus.SUCCEEDED,
        children={"b": 1, "c": 2},
        watch_seconds=30,
        sends=sends,
    )
    assert out.recorded and out.ready == ("b",)
    assert st.r.lrange(sends["b"][0], 0, -1) == [sends["b"][1].encode()]
    assert not st.r.exists(sends["c"][0])  # c still waits for x: its message is not sent
    assert _watched(st, run, "b")


def test_finish_send_of_a_duplicate_pushes_nothing(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    _finish(st, run, "a", StepStatus.SUCCEEDED, children={"b": 1}, watch_seconds=30)
    sends = _sends(run, ["b"])
    out = _finish(st, run, "a", StepStatus.SUCCEEDED, children={"b": 1}, sends=sends)
    assert out.duplicate
    assert not st.r.exists(sends["b"][0])


def test_finish_send_with_bad_extra_counts_writes_nothing(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    finish_args = [run, "a", "t", "now", "succeeded", 0, "", "", "", 0, "wf", 1, 0]
    finish_args += [1, "b", 1, 30, "", "", "", ""]
    keys = [*st.keys.transition(run, "a"), st.keys.arrived(run, "b"), f"{PREFIX}:lua:q:{run}"]
    with pytest.raises(redis.ResponseError):  # two payloads claimed for one child
        st._finish_send(keys=keys, args=[*finish_args, "b", "msg", 3, 1])
    assert _step(st, run, "a")["status"] == "running"
    assert not st.r.exists(f"{PREFIX}:lua:q:{run}")


def test_watch_creates_entries_and_only_existing_extends_without_creating(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": []})
    st.watch_steps([f"{run}|a"], 30)
    st.watch_steps([f"{run}|a", f"{run}|b"], 300, only_existing=True)
    assert _watched(st, run, "a") and not _watched(st, run, "b")
    assert st.r.zscore(st.keys.leases, f"{run}|a") > st.server_time() + 200


def test_drop_expired_removes_an_entry_still_expired_but_not_one_renewed(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": []})
    st.watch_steps([f"{run}|a", f"{run}|b"], 10)
    cutoff = st.server_time() + 20
    st.watch_steps([f"{run}|b"], 60)  # renewed after it was found expired
    st.drop_lease_entry(run, "a", expired_before=cutoff)
    st.drop_lease_entry(run, "b", expired_before=cutoff)
    assert not _watched(st, run, "a")
    assert _watched(st, run, "b")


# ------------------------------------------------------------------ cancel


def test_cancel_begin_records_the_request_once(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    k = st.keys
    head = [k.run(run), k.run_events(run), k.global_events]
    args = [run, "now", "wf", "stop", "ann"]
    assert st._cancel_begin(keys=head, args=args) == [b"ok", b""]
    assert st._cancel_begin(keys=head, args=args) == [b"ok", b""]
    h = _run_hash(st, run)
    assert (h["cancel_requested"], h["cancel_reason"], h["cancelled_by"]) == ("1", "stop", "ann")
    assert _types(st, run).count("workflow_cancelling") == 1


@pytest.mark.parametrize("paused", [False, True])
def test_cancel_begin_tells_a_run_that_waits_for_its_group(st: RunStore, paused: bool) -> None:
    run = _run(st, {"a": []})
    st.r.hset(st.keys.run(run), "status", "queued")
    if paused:
        st.r.hset(st.keys.run(run), mapping={"status": "paused", "status_before_pause": "queued"})
    k = st.keys
    head = [k.run(run), k.run_events(run), k.global_events]
    args = [run, "now", "wf", "stop", ""]
    assert st._cancel_begin(keys=head, args=args) == [b"ok", b"1"]
    assert st._cancel_begin(keys=head, args=args) == [b"ok", b"1"]  # asked again


def test_cancel_begin_refuses_a_run_that_ended(st: RunStore) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    _finish(st, run, "a", StepStatus.SUCCEEDED)
    k = st.keys
    head = [k.run(run), k.run_events(run), k.global_events]
    assert st._cancel_begin(keys=head, args=[run, "now", "wf", "x", ""]) == [
        b"finished",
        b"succeeded",
    ]
    assert "cancel_requested" not in _run_hash(st, run)
    assert st._cancel_begin(keys=[k.run("nope"), *head[1:]], args=["nope", "n", "wf", "x", ""]) == [
        b"missing"
    ]


def test_cancel_steps_cancels_what_is_not_running_and_ends_the_run(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    assert st.cancel_run(run) == (2, "cancelled")
    assert _step(st, run, "a")["status"] == _step(st, run, "b")["status"] == "cancelled"
    assert _types(st, run)[-1] == "workflow_cancelled"


def test_cancel_steps_leaves_a_running_step_to_stop_itself(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"]})
    _claim(st, run)
    assert st.cancel_run(run) == (1, None)
    assert _step(st, run, "a")["status"] == "running"
    assert _run_hash(st, run)["remaining"] == "1"


def test_cancel_fanned_cancels_a_fanned_out_step_whose_instances_all_ended(
    st: RunStore,
) -> None:
    run = _run(st, {"m": []})
    _claim(st, run, "m")
    st.add_instances(run, "m", [{"i": 0}, {"i": 1}])
    for i in (0, 1):
        _claim(st, run, f"m[{i}]", token=f"i{i}")
        _finish(st, run, f"m[{i}]", StepStatus.SUCCEEDED, token=f"i{i}")
        st.instance_ended(run, f"m[{i}]")
    assert st.cancel_run(run) == (1, "cancelled")
    assert _step(st, run, "m")["status"] == "cancelled"


def test_cancel_fanned_waits_while_an_instance_is_still_running(st: RunStore) -> None:
    run = _run(st, {"m": []})
    _claim(st, run, "m")
    st.add_instances(run, "m", [{"i": 0}, {"i": 1}])
    _claim(st, run, "m[0]", token="i0")
    k = st.keys
    head = [k.run(run), k.run_events(run), k.global_events]
    res = st._cancel_fanned(
        keys=[*head, k.step(run, "m"), k.ended_instances(run, "m")], args=[run, "n", "wf", "x", "m"]
    )
    assert res[:2] == [0, b""]
    assert _step(st, run, "m")["status"] == "running"


# ------------------------------------------------------------------ fan-out, fail-over


def test_add_instances_records_them_once_and_watches_the_first_window(st: RunStore) -> None:
    run = _run(st, {"m": []})
    ids = st.add_instances(run, "m", [{"i": 0}, {"i": 1}, {"i": 2}], window=2, watch_seconds=30)
    assert ids == ["m[0]", "m[1]", "m[2]"]
    assert _run_hash(st, run)["remaining"] == "4"
    assert [_watched(st, run, i) for i in ids] == [True, True, False]
    assert st.instance_values(run, "m[2]") == {"i": 2}


def test_add_instances_a_second_time_changes_nothing(st: RunStore) -> None:
    run = _run(st, {"m": []})
    st.add_instances(run, "m", [{"i": 0}])
    k = st.keys
    res = st._add_instances(
        keys=[k.run(run), k.step(run, "m"), k.step(run, "m[0]"), k.step(run, "m[1]")],
        args=[json.dumps(["m[0]", "m[1]"]), 2, "{}", "{}", ""],
    )
    assert res == 0
    assert _run_hash(st, run)["remaining"] == "2"
    assert not st.r.exists(k.step(run, "m[1]"))


def test_instance_ended_sends_the_next_of_its_lane_then_the_fan_in(st: RunStore) -> None:
    run = _run(st, {"m": []})
    st.add_instances(run, "m", [{"i": 0}, {"i": 1}], window=1)
    assert st.instance_ended(run, "m[0]", watch_seconds=30) == ("m[1]", False)
    assert _watched(st, run, "m[1]")
    assert st.instance_ended(run, "m[1]", watch_seconds=30) == (None, True)
    assert _watched(st, run, "m")
    assert st.instance_ended(run, "m[1]") == (None, True)  # a replay: same answer


def test_instance_ended_finds_the_fan_in_due_once_when_the_parent_is_watched(
    st: RunStore,
) -> None:
    """With a watch (a Redis broker) a lost join is the reconciler's to find: replays of
    ended instances (after a cancel, a window of queued messages) do not send it again."""
    run = _run(st, {"m": []})
    st.add_instances(run, "m", [{"i": 0}, {"i": 1}], window=2)
    assert st.instance_ended(run, "m[0]", watch_seconds=30) == (None, False)
    assert st.instance_ended(run, "m[1]", watch_seconds=30) == (None, True)
    assert _watched(st, run, "m")  # until the join hands it on
    assert st.instance_ended(run, "m[1]", watch_seconds=30) == (None, False)
    assert st.instance_ended(run, "m[0]", watch_seconds=30) == (None, False)
    assert _watched(st, run, "m")


def test_instance_ended_sends_no_next_instance_while_the_run_is_cancelling(
    st: RunStore,
) -> None:
    run = _run(st, {"m": []})
    st.add_instances(run, "m", [{"i": 0}, {"i": 1}], window=1)
    st.r.hset(st.keys.run(run), "cancel_requested", "1")
    assert st.instance_ended(run, "m[0]", watch_seconds=30) == (None, False)
    assert not _watched(st, run, "m[1]")


def test_fail_over_switches_to_dynamic_and_returns_the_ready_steps(st: RunStore) -> None:
    run = _run(st, {"a": [], "b": ["a"], "c": ["b"]})
    st.r.hset(st.keys.run(run), "mode", "canvas")
    st.r.hset(st.keys.step(run, "a"), "status", "succeeded")
    assert st.fail_over_to_dynamic(run, {"a": ["b"], "b": ["c"], "c": []}) == ["b"]
    assert st.run_mode(run) == "dynamic"
    assert st.r.smembers(st.keys.arrived(run, "b")) == {b"a"}
    assert _watched(st, run, "b") and not _watched(st, run, "c")


def test_fail_over_given_bad_children_changes_nothing(st: RunStore) -> None:
    run = _run(st, {"a": []})
    st.r.hset(st.keys.run(run), "mode", "canvas")
    k = st.keys
    with pytest.raises(redis.ResponseError):
        st._fail_over(keys=[k.run(run), k.step(run, "a"), k.arrived(run, "a")], args=["{}", "a"])
    assert st.run_mode(run) == "canvas"


# ------------------------------------------------------------------ gates (operator control)


@pytest.fixture
def gates(st: RunStore) -> Gates:
    return Gates(st)


def test_pause_then_resume_hands_back_the_parked_messages(st: RunStore, gates: Gates) -> None:
    run = _run(st, {"a": []})
    gates.pause(run, "ann")
    assert _run_hash(st, run)["status"] == "paused"
    msg = {"args": [run, "a"]}
    assert _claim(st, run, park_message=msg).action == "parked"
    assert gates.resume(run, "ann") == [msg]
    assert _run_hash(st, run)["status"] == "pending"
    assert _step(st, run, "a")["status"] == "pending"
    assert _watched(st, run, "a")
    assert _types(st, run) == ["workflow_paused", "step_waiting", "workflow_resumed"]


def test_pause_refuses_a_run_that_ended_and_twice_is_a_no_op(st: RunStore, gates: Gates) -> None:
    run = _run(st, {"a": []})
    gates.pause(run, "ann")
    gates.pause(run, "bob")
    assert _run_hash(st, run)["paused_by"] == "ann"
    assert gates.resume(run, "ann") == []
    assert gates.resume(run, "ann") == []  # not paused: nothing to do
    _claim(st, run)
    _finish(st, run, "a", StepStatus.SUCCEEDED)
    with pytest.raises(InvalidOperation, match="already ended"):
        gates.pause(run, "ann")
    assert (_run_hash(st, run)["status"], _run_hash(st, run)["paused"]) == ("succeeded", "0")
    assert _types(st, run).count("workflow_paused") == 1


def test_approval_opens_an_awaiting_step_and_hands_back_its_message(
    st: RunStore, gates: Gates
) -> None:
    run = _run(st, {"a": []})
    msg = {"args": [run, "a"]}
    _claim(st, run, needs_approval=True, park_message=msg, approval_prompt="ok?")
    sig = gates.open_gate(run, "a", expected="awaiting_approval", event="step_approved", by="ann")
    assert sig == msg
    step = _step(st, run, "a")
    assert (step["status"], step["approved"], step["approved_by"]) == ("pending", "1", "ann")
    assert _watched(st, run, "a")
    assert _claim(st, run, needs_approval=True).action == "start"  # approved: the gate is open


def test_approval_refuses_a_step_that_is_not_awaiting_it(st: RunStore, gates: Gates) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    with pytest.raises(InvalidOperation, match="running, not awaiting approval"):
        gates.open_gate(run, "a", expected="awaiting_approval", event="step_approved", by="ann")
    assert _step(st, run, "a")["status"] == "running"
    assert "approved" not in _step(st, run, "a")


def _await(gates: Gates, run: str, token: str = "t", attempt: int = 1) -> Any:
    return gates.await_decision(
        run, "a", token=token, workflow="wf", signature={"args": [run, "a"]}, exit_code=2,
        reason="exit_code", stderr=["boom"], history={"attempt": attempt}, attempt=attempt,
    )  # fmt: skip


def test_a_failed_step_awaits_a_decision_and_a_retry_decision_opens_it(
    st: RunStore, gates: Gates
) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    assert _await(gates, run).done
    assert _step(st, run, "a")["status"] == "awaiting_decision"
    assert _run_hash(st, run)["status"] == "awaiting_decision"
    assert not _watched(st, run, "a") and not st.r.exists(st.keys.lease(run, "a"))
    sig = gates.open_gate(
        run, "a", expected="awaiting_decision", event="step_retry_decided", by="ann"
    )
    assert sig == {"args": [run, "a"]}
    assert (_step(st, run, "a")["status"], _run_hash(st, run)["status"]) == ("pending", "running")


def test_await_decision_refuses_a_delivery_that_does_not_hold_the_step(
    st: RunStore, gates: Gates
) -> None:
    run = _run(st, {"a": []})
    _claim(st, run)
    assert _await(gates, run, token="other").superseded
    assert _step(st, run, "a")["status"] == "running"
    with pytest.raises(InvalidOperation):
        gates.open_gate(
            run, "a", expected="awaiting_decision", event="step_retry_decided", by="ann"
        )


def test_a_decision_is_recorded_with_the_steps_end_and_the_run_goes_on(
    st: RunStore, gates: Gates
) -> None:
    run = _run(st, {"a": [], "b": []})
    _claim(st, run)
    assert _await(gates, run).done
    out = _finish(
        st, run, "a", StepStatus.SKIPPED, token="op", attempt=None,
        expect="awaiting_decision", decision=Decision("step_decision_skip", "ann"),
    )  # fmt: skip
    assert out.refused is None and not out.duplicate
    assert _types(st, run)[-2:] == ["step_decision_skip", "step_skipped"]
    decided = [f for _, f in st.events(run) if f["type"] == "step_decision_skip"]
    assert decided[0]["by"] == "ann" and decided[0]["step"] == "a"
    assert (_step(st, run, "a")["status"], _run_hash(st, run)["status"]) == ("skipped", "running")


def test_a_decision_on_a_step_that_left_the_gate_is_refused_and_writes_nothing(
    st: RunStore, gates: Gates
) -> None:
    """Two operators (or an operator and a timeout) read the same gate: the second
    decision finds the step decided and records neither its event nor an end."""
    run = _run(st, {"a": []})
    _claim(st, run)
    assert _await(gates, run).done
    first = _finish(
        st, run, "a", StepStatus.SKIPPED, token="op", attempt=None,
        expect="awaiting_decision", decision=Decision("step_decision_skip", "ann"),
    )  # fmt: skip
    assert first.run_status == "succeeded"
    events, run_hash = st.events(run), _run_hash(st, run)
    second = _finish(
        st, run, "a", StepStatus.FAILED, token="op", attempt=None,
        expect="awaiting_decision", decision=Decision("step_decision_abort", "bob"),
    )  # fmt: skip
    assert second.refused == "skipped"
    assert st.events(run) == events and _run_hash(st, run) == run_hash


def test_an_approval_timeout_after_the_approval_is_refused(st: RunStore, gates: Gates) -> None:
    run = _run(st, {"a": []})
    _claim(st, run, needs_approval=True, park_message={"args": [run, "a"]}, approval_prompt="ok?")
    gates.open_gate(run, "a", expected="awaiting_approval", event="step_approved", by="ann")
    out = _finish(
        st, run, "a", StepStatus.FAILED, token="timeout", attempt=None,
        reason="approval_timeout", expect="awaiting_approval",
    )  # fmt: skip
    assert out.refused == "pending"
    assert _step(st, run, "a")["status"] == "pending"
    assert _claim(st, run, needs_approval=True).action == "start"  # the approval stands


def test_admit_starts_under_the_limit_then_queues(st: RunStore, gates: Gates) -> None:
    group = f"g-{uuid.uuid4().hex}"
    first, second = _run(st, {"a": []}), _run(st, {"a": []})
    assert gates.admit(first, group, 1, "queue") == ("start", [])
    assert _run_hash(st, first)["status"] == "pending"
    assert gates.admit(second, group, 1, "queue") == ("queued", [])
    assert gates.admit(second, group, 1, "skip") == ("skip", [])
    assert st.r.lrange(st.keys.cgroup_queue(group), 0, -1) == [second.encode()]


def test_admit_refuses_a_group_key_it_did_not_write_and_writes_nothing(
    st: RunStore, gates: Gates
) -> None:
    group = f"g-{uuid.uuid4().hex}"
    run = _run(st, {"a": []})
    st.r.set(st.keys.cgroup(group), "not a zset")
    with pytest.raises(InvalidOperation, match="is not what runbook-celery"):
        gates.admit(run, group, 1, "queue")
    assert not st.r.exists(st.keys.cgroup_queue(group))
    assert _run_hash(st, run)["status"] == "pending"  # as recorded, untouched


# ------------------------------------------------------------------ kombu's keys (recovery.py)
# Real Redis only (not over the in-memory double): these need a message that kombu's own
# Redis transport published and delivered, and that transport opens its own connections
# to a server URL. (tests/test_reconciler.py runs restore.lua on the double, on a message
# shaped by hand.)


@pytest.fixture
def kombu_queue(redis_client: redis.Redis) -> Any:
    """A queue of our own on the test Redis, with a message kombu published and delivered
    but never acknowledged (its consumer died): (task id, queue name, delivery tag)."""
    name = f"rbtest-lua-{SESSION}-{uuid.uuid4().hex[:6]}"
    exchange = Exchange(name, type="direct")
    queue = Queue(name, exchange, routing_key=name)
    task_id = uuid.uuid4().hex
    with Connection(TEST_REDIS_URL) as conn:
        conn.Producer().publish(
            {"n": 1}, exchange=exchange, routing_key=name, declare=[queue], headers={"id": task_id}
        )
        channel = conn.channel()
        message = channel.basic_get(name)  # delivered: recorded in kombu's unacked hash
        assert message is not None
        channel.qos.restore_at_shutdown = False  # the consumer dies: no restore on close
        channel.close()
    yield task_id, name, message.delivery_tag
    redis_client.delete(name, *(f"{name}:{p}" for p in range(1, 10)))
    redis_client.delete(f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    redis_client.hdel("unacked", message.delivery_tag)
    redis_client.zrem("unacked_index", message.delivery_tag)


def test_restore_puts_a_kombu_message_left_unacknowledged_back_on_its_queue(
    redis_client: redis.Redis, kombu_queue: Any
) -> None:
    task_id, name, tag = kombu_queue
    assert redis_client.hexists("unacked", tag)
    assert recovery.queued(redis_client, name, [task_id]) == set()
    assert recovery.restore_unacked(redis_client, task_id)
    assert not redis_client.hexists("unacked", tag)
    assert redis_client.zscore("unacked_index", tag) is None
    (raw,) = redis_client.lrange(name, 0, -1)
    payload = json.loads(raw)
    assert payload["headers"]["id"] == task_id
    assert payload["headers"]["redelivered"] is True
    assert recovery.queued(redis_client, name, [task_id, "other"]) == {task_id}


def test_restore_refuses_a_message_no_longer_unacknowledged(
    redis_client: redis.Redis, kombu_queue: Any
) -> None:
    task_id, name, tag = kombu_queue
    found = recovery._unacked(redis_client, {task_id})[task_id]
    redis_client.hdel("unacked", tag)  # acknowledged (or restored) meanwhile
    assert not recovery._restore(redis_client, *found)
    assert redis_client.llen(name) == 0  # never pushed twice
