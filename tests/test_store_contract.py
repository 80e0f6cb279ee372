"""One contract for the run store, on real Redis and on its in-memory double (fakeredis)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from conftest import PREFIX

from runbook_celery.store import RunStore
from runbook_celery.store.events import StepStatus


def _snapshot(steps: dict[str, list[str]]) -> dict:
    return {
        "workflow": "wf",
        "params": {"p": "1"},
        "mode": "dynamic",
        "steps": [{"id": s, "needs": n} for s, n in steps.items()],
    }


@pytest.fixture
def rstore(store_client):  # type: ignore[no-untyped-def]
    """The store on real Redis, then on the in-memory double (``store_client``)."""
    return RunStore(store_client, prefix=f"{PREFIX}:contract")


def _start(store: RunStore, run: str, step: str, needs: list[str], token: str = "t"):  # type: ignore[no-untyped-def]
    return store.start_step(
        run,
        step,
        token=token,
        needs=needs,
        output_steps=needs,
        workflow="wf",
        lease_seconds=30,
        max_attempts=3,
    )


def test_a_run_goes_from_pending_to_succeeded_with_events(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": [], "b": ["a"]}), "sha")
    assert rstore.get_run(run).status == "pending"
    d = _start(rstore, run, "a", [])
    assert d.action == "start" and d.attempt == 1
    assert rstore.get_run(run).status == "running"
    out = rstore.finish_step(
        run,
        "a",
        token="t",
        status=StepStatus.SUCCEEDED,
        workflow="wf",
        exit_code=0,
        outputs={"k": "v"},
        children={"b": 1},
    )
    assert out.ready == ("b",) and out.run_status is None
    d = _start(rstore, run, "b", ["a"])
    assert d.need_outputs == {"a": {"k": "v"}}
    out = rstore.finish_step(
        run, "b", token="t", status=StepStatus.SUCCEEDED, workflow="wf", exit_code=0, outputs={}
    )
    assert out.run_status == "succeeded"
    record = rstore.get_run(run)
    assert record.status == "succeeded" and record.steps["a"].outputs == {"k": "v"}
    types = [e["type"] for _, e in rstore.events(run)]
    assert types == [
        "workflow_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "workflow_succeeded",
    ]


def test_a_finished_step_is_never_started_or_finished_twice(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": []}), "sha")
    _start(rstore, run, "a", [])
    rstore.finish_step(run, "a", token="t", status=StepStatus.SUCCEEDED, workflow="wf")
    assert _start(rstore, run, "a", [], token="other").action == "done"
    dup = rstore.finish_step(run, "a", token="other", status=StepStatus.FAILED, workflow="wf")
    assert dup.duplicate
    assert rstore.get_run(run).steps["a"].status == "succeeded"


def test_a_live_lease_keeps_a_second_delivery_out(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": []}), "sha")
    assert _start(rstore, run, "a", [], token="one").action == "start"
    assert _start(rstore, run, "a", [], token="two").action == "busy"


def test_a_step_whose_needs_failed_is_blocked(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": [], "b": ["a"]}), "sha")
    _start(rstore, run, "a", [])
    rstore.finish_step(run, "a", token="t", status=StepStatus.FAILED, workflow="wf", exit_code=1)
    d = _start(rstore, run, "b", ["a"])
    assert d.action == "blocked" and d.blocked_by == "a" and d.status == "failed"


def test_simultaneous_finishes_lose_no_update(rstore):
    run = uuid.uuid4().hex
    n = 30
    steps = {f"s{i}": [] for i in range(n)} | {"join": [f"s{i}" for i in range(n)]}
    rstore.create_run(run, _snapshot(steps), "sha")
    for i in range(n):
        _start(rstore, run, f"s{i}", [])
    ready: list[tuple[str, ...]] = []

    def finish(i: int) -> None:
        out = rstore.finish_step(
            run,
            f"s{i}",
            token="t",
            status=StepStatus.SUCCEEDED,
            workflow="wf",
            children={"join": n},
        )
        ready.append(out.ready)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in ready if r == ("join",)) == 1  # the join fires exactly once
    assert rstore.r.hget(rstore.keys.run(run), "remaining") in (b"1", "1")


def test_cancel_marks_pending_steps_and_ends_an_idle_run(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": [], "b": ["a"]}), "sha")
    n, final = rstore.cancel_run(run)
    assert (n, final) == (2, "cancelled")
    assert _start(rstore, run, "a", []).action == "done"
    assert rstore.get_run(run).steps["b"].status == "cancelled"


def test_retry_and_handback_keep_the_step_open(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": []}), "sha")
    _start(rstore, run, "a", [], token="t1")
    assert rstore.retry_step(
        run,
        "a",
        token="t1",
        workflow="wf",
        attempt=1,
        exit_code=1,
        reason="exit_code",
        delay=0.5,
        history={"attempt": 1},
        lease_seconds=30,
    ).done
    assert rstore.get_run(run).steps["a"].status == "retrying"
    d = _start(rstore, run, "a", [], token="t2")
    assert d.action == "start" and d.attempt == 2
    assert rstore.handback_step(
        run, "a", token="t2", workflow="wf", attempt=2, reason="shutdown", lease_seconds=30
    ).done
    step = rstore.get_run(run).steps["a"]
    assert step.status == "pending" and step.attempts == 1
    assert step.history == [{"attempt": 1}]


def test_deliveries_are_bounded_when_workers_keep_dying(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"a": []}), "sha")
    for i in range(3):
        assert _start(rstore, run, "a", [], token=f"t{i}").action == "start"
        rstore.r.delete(rstore.keys.lease(run, "a"))  # the worker died: its lease is gone
    assert _start(rstore, run, "a", [], token="t9").action == "exhausted"


def test_fan_out_instances_are_recorded_once(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": []}), "sha")
    ids = rstore.add_instances(run, "m", [{"item": 1}, {"item": 2}])
    assert ids == ["m[0]", "m[1]"]
    assert rstore.add_instances(run, "m", [{"item": 9}]) == ids
    assert rstore.instance_values(run, "m[1]") == {"item": 2}
    assert list(rstore.get_run(run).steps) == ["m", "m[0]", "m[1]"]


def test_the_step_that_ends_a_run_sets_the_retention_of_every_key_of_the_run(rstore):
    # Given a run with a fanned-out step and a log line, all finished but the last step
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": [], "z": ["m"]}), "sha")
    ids = rstore.add_instances(run, "m", [{"item": 1}, {"item": 2}])
    rstore.r.rpush(rstore.keys.logs(run, "m[0]"), "a line")
    for sid in [*ids, "m"]:
        _start(rstore, run, sid, [])
        rstore.finish_step(run, sid, token="t", status=StepStatus.SUCCEEDED, workflow="wf")
    _start(rstore, run, "z", ["m"])
    keys = [k for k in rstore.r.keys(f"{rstore.keys.run(run)}*") if b":lease:" not in k]
    assert keys and all(rstore.r.ttl(k) == -1 for k in keys)

    # When the last step finishes
    out = rstore.finish_step(run, "z", token="t", status=StepStatus.SUCCEEDED, workflow="wf")

    # Then that one call gave every key of the run (instances and logs too) the retention
    assert out.run_status == "succeeded"
    keys = [k for k in rstore.r.keys(f"{rstore.keys.run(run)}*")]
    assert rstore.keys.logs(run, "m[0]").encode() in keys
    ttls = {k: rstore.r.ttl(k) for k in keys}
    assert all(0 < t <= rstore.retention for t in ttls.values()), ttls


def test_a_step_finishing_after_its_canvas_run_failed_over_joins_its_children(rstore):
    # Given a canvas run a -> (b, c) -> d where a succeeded and b is running
    run = uuid.uuid4().hex
    shape = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    rstore.create_run(run, {**_snapshot(shape), "mode": "canvas"}, "sha")
    _start(rstore, run, "a", [])
    out = rstore.finish_step(
        run, "a", token="t", status=StepStatus.SUCCEEDED, workflow="wf", children={"b": 1, "c": 1}
    )
    assert out.ready == ()  # canvas: Celery hands on, the store joins nothing
    assert _start(rstore, run, "b", ["a"]).mode == "canvas"
    # When c's message is lost and the run fails over while b runs
    ready = rstore.fail_over_to_dynamic(run, {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []})
    assert ready == ["c"]
    # Then b, which started in canvas mode, joins d when it finishes, and c completes it
    out = rstore.finish_step(
        run, "b", token="t", status=StepStatus.SUCCEEDED, workflow="wf", children={"d": 2}
    )
    assert out.ready == ()
    _start(rstore, run, "c", ["a"])
    out = rstore.finish_step(
        run, "c", token="t", status=StepStatus.SUCCEEDED, workflow="wf", children={"d": 2}
    )
    assert out.ready == ("d",)


def test_an_expired_watch_is_kept_when_it_was_renewed_meanwhile(rstore):
    run = uuid.uuid4().hex
    rstore.watch_steps([f"{run}|a", f"{run}|b"], -10)
    cutoff = time.time()
    assert {(run, "a"), (run, "b")} <= set(rstore.expired_leases(before=cutoff))
    rstore.watch_steps([f"{run}|b"], 30, only_existing=True)  # a new delivery of b
    rstore.watch_steps([f"{run}|c"], 30, only_existing=True)  # never creates an entry
    rstore.drop_lease_entry(run, "a", expired_before=cutoff)
    rstore.drop_lease_entry(run, "b", expired_before=cutoff)
    members = {m.decode() for m in rstore.r.zrange(rstore.keys.leases, 0, -1)}
    assert f"{run}|a" not in members and f"{run}|b" in members and f"{run}|c" not in members
    rstore.drop_lease_entry(run, "b")


def test_cancel_of_a_fanned_out_step_ends_it_and_the_run_at_once(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": [], "z": ["m"]}), "sha")
    _start(rstore, run, "m", [])  # the parent fanned out: it stays running until joined
    ids = rstore.add_instances(run, "m", [{"item": i} for i in range(1203)], window=3)
    _start(rstore, run, ids[0], [])
    rstore.finish_step(run, ids[0], token="t", status=StepStatus.SUCCEEDED, workflow="wf")
    assert rstore.instance_ended(run, ids[0]) == ("m[3]", False)  # its lane goes on
    n, final = rstore.cancel_run(run)
    assert (n, final) == (1202 + 1 + 1, "cancelled")  # instances left, the parent, z
    record = rstore.get_run(run)
    assert record.steps["m"].status == "cancelled" and record.steps["m[1202]"].status == (
        "cancelled"
    )
    assert rstore.instance_ended(run, ids[1]) == (None, False)  # no new lane step, no join


def test_a_run_that_ends_leaves_none_of_its_steps_in_the_lease_index(rstore):
    # Given a run with more steps watched than one batch of finalize's ZREM (500)
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": [], "z": ["m"]}), "sha")
    _start(rstore, run, "m", [])
    ids = rstore.add_instances(run, "m", [{"item": i} for i in range(1203)], window=3)
    rstore.watch_steps([f"{run}|{sid}" for sid in [*ids, "m", "z"]], 60)
    # When it ends (cancelled)
    assert rstore.cancel_run(run)[1] == "cancelled"
    # Then none of its entries is left for the reconciler
    members = {m.decode() for m in rstore.r.zrange(rstore.keys.leases, 0, -1)}
    assert not {m for m in members if m.startswith(f"{run}|")}


def test_an_instance_that_ends_last_makes_the_join_due_once_per_call(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": []}), "sha")
    _start(rstore, run, "m", [])
    ids = rstore.add_instances(run, "m", [{"item": 1}, {"item": 2}], window=1)
    assert rstore.instance_ended(run, ids[0]) == ("m[1]", False)
    assert rstore.instance_ended(run, ids[1]) == (None, True)
    assert rstore.instance_ended(run, ids[1]) == (None, True)  # a replay: still due (idempotent)
    rstore.finish_step(run, "m", token="t", status=StepStatus.SUCCEEDED, workflow="wf")
    assert rstore.instance_ended(run, ids[1]) == (None, False)  # joined: nothing more


def test_a_cancel_that_ends_a_run_sets_the_retention_of_every_key(rstore):
    run = uuid.uuid4().hex
    rstore.create_run(run, _snapshot({"m": [], "z": ["m"]}), "sha")
    _start(rstore, run, "m", [])
    ids = rstore.add_instances(run, "m", [{"item": 1}, {"item": 2}])
    rstore.r.rpush(rstore.keys.logs(run, ids[1]), "a line")
    assert rstore.cancel_run(run)[1] == "cancelled"
    keys = rstore.r.keys(f"{rstore.keys.run(run)}*")
    assert rstore.keys.logs(run, ids[1]).encode() in keys
    ttls = {k: rstore.r.ttl(k) for k in keys}
    assert all(0 < t <= rstore.retention for t in ttls.values()), ttls
