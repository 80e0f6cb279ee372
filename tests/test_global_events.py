"""The global event stream as readers see it (store/globalevents.py), on real Redis and on
the in-memory double: a step's own path is written once, to its run's stream, and readers of
the global stream still get every event of every run, in order."""

from __future__ import annotations

import uuid

import pytest
from conftest import PREFIX

from runbook_celery.definition.notifyconfig import NOTIFY_EVENT_OF
from runbook_celery.definition.vocabulary import RUN_STREAM_ONLY_EVENTS
from runbook_celery.store import RunStore
from runbook_celery.store.codec import _s
from runbook_celery.store.events import StepStatus
from runbook_celery.store.globalevents import GlobalFollower, id_key
from runbook_celery.store.history import trim_global_events


@pytest.fixture
def gstore(store_client):  # type: ignore[no-untyped-def]
    """A store of its own prefix, so the global stream holds only this test's runs."""
    return RunStore(store_client, prefix=f"{PREFIX}:global:{uuid.uuid4().hex[:8]}")


def _run(store: RunStore, steps: tuple[str, ...] = ("a", "b")) -> str:
    run = uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": "dynamic",
        "steps": [{"id": s, "needs": []} for s in steps],
    }
    store.create_run(run, snapshot, "sha")
    return run


def _step(store: RunStore, run: str, step: str, status: StepStatus = StepStatus.SUCCEEDED) -> None:
    decision = store.start_step(
        run,
        step,
        token="t",
        needs=[],
        output_steps=[],
        workflow="wf",
        lease_seconds=30,
        max_attempts=3,
    )
    assert decision.action == "start"
    store.finish_step(run, step, token="t", status=status, workflow="wf", exit_code=0)


def _global_stream(store: RunStore) -> list[str]:
    return [_s(f[b"type"]) for _, f in store.r.xrange(store.keys.global_events)]


def test_a_steps_own_path_is_written_once_and_read_from_the_global_stream_still(gstore):
    run = _run(gstore)
    _step(gstore, run, "a")
    _step(gstore, run, "b", StepStatus.FAILED)
    mine = gstore.events(run)
    # the global stream itself holds what notifications can be about, not each step's path
    assert _global_stream(gstore) == ["workflow_started", "step_failed", "workflow_failed"]
    # and a reader of the global stream gets the run's events as the run's stream holds them
    # (an event in both streams has an id in each)
    assert [e for _, e in gstore.events(None)] == [e for _, e in mine]
    assert [e["type"] for _, e in mine] == [
        "workflow_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_failed",
        "workflow_failed",
    ]
    assert gstore.r.zscore(gstore.keys.event_runs, run) not in (None, float("inf"))


def test_runs_interleaved_come_out_in_id_order_and_resume_after_any_id(gstore):
    one, two = _run(gstore), _run(gstore)
    _step(gstore, one, "a")
    _step(gstore, two, "a")
    _step(gstore, one, "b")
    _step(gstore, two, "b")
    merged = gstore.events(None)
    assert len(merged) == 12
    assert [id_key(i) for i, _ in merged] == sorted(id_key(i) for i, _ in merged)
    assert sorted(str(e) for _, e in merged) == sorted(
        str(e) for _, e in gstore.events(one) + gstore.events(two)
    )
    for cut in range(len(merged)):
        after = gstore.events(None, since=merged[cut][0])
        assert after == [e for e in merged if id_key(e[0]) > id_key(merged[cut][0])]
    # pages of any size, resumed after their last id, give the same events
    for count in (1, 2, 5):
        paged, last = [], "0-0"
        while page := gstore.events(None, since=last, count=count):
            paged += page
            last = page[-1][0]
        assert paged == merged
    assert list(gstore.global_events()) == merged


def test_a_follower_merges_runs_that_start_after_it_and_leaves_those_that_ended(gstore):
    old = _run(gstore)
    _step(gstore, old, "a")
    _step(gstore, old, "b")
    follower = GlobalFollower(gstore.r, gstore.keys, gstore.newest_event_id())
    assert follower.read(1) == []
    assert gstore.keys.run_events(old) not in follower.cursors  # ended before: left
    new = _run(gstore)
    _step(gstore, new, "a")
    seen = follower.read(1)
    seen += follower.read(1)  # the new run's stream, merged from its first global event
    assert [e["type"] for _, e in seen] == ["workflow_started", "step_started", "step_succeeded"]
    _step(gstore, new, "b")
    seen = follower.read(1)
    assert [e["type"] for _, e in seen] == ["step_started", "step_succeeded", "workflow_succeeded"]
    follower.read(1)
    assert gstore.keys.run_events(new) not in follower.cursors


def test_the_event_types_left_to_run_streams_are_a_steps_path_only():
    # every event a notification can be about stays in the global stream (notify.py reads it)
    assert not RUN_STREAM_ONLY_EVENTS & set(NOTIFY_EVENT_OF)
    assert {"step_started", "step_succeeded"} == RUN_STREAM_ONLY_EVENTS


def test_runs_that_ended_before_the_retention_are_no_longer_merged(gstore):
    run = _run(gstore)
    _step(gstore, run, "a")
    _step(gstore, run, "b")
    gstore.r.zadd(gstore.keys.event_runs, {run: 1000})  # as if it ended in 1970
    trim_global_events(gstore)
    assert gstore.r.zscore(gstore.keys.event_runs, run) is None


def test_an_event_of_a_run_whose_stream_expired_is_read_from_the_global_stream(gstore):
    run = _run(gstore)
    _step(gstore, run, "a")
    gstore.r.delete(gstore.keys.run_events(run))  # expired; a notification came after
    gstore.r.xadd(gstore.keys.global_events, {"type": "notification_sent", "run_id": run})
    assert [e["type"] for _, e in gstore.events(None)] == ["workflow_started", "notification_sent"]
    follower = GlobalFollower(gstore.r, gstore.keys, "0-0")
    assert [e["type"] for _, e in follower.read(1)] == ["workflow_started", "notification_sent"]
