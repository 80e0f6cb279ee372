"""Durable, resumable event streams: `runbook-celery events` and `runbook_celery.store.events`."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import run_cli

from runbook_celery import submit
from runbook_celery.core.errors import InvalidOperation, RunNotFound
from runbook_celery.store import events

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker"), pytest.mark.timeout(90)]

TWO_STEPS = """
name: {name}
steps:
  - id: first
    run: echo one
  - id: second
    needs: [first]
    run: exit {code}
"""


def _order(stream_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in stream_id.split("-"))


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_events_since_resumes_exactly_after_the_given_id(write_workflow):
    run = submit(write_workflow(TWO_STEPS.format(name="resume", code=0)))
    assert run.wait(timeout=60).status == "succeeded"
    everything = run_cli("events", "--run", run.id, "--json")
    assert everything.returncode == 0, everything.stderr
    all_events = _json_lines(everything.stdout)
    assert [e["type"] for e in all_events] == [
        "workflow_started",
        "step_started",
        "step_succeeded",
        "step_started",
        "step_succeeded",
        "workflow_succeeded",
    ]
    for cut in range(len(all_events)):
        # When a consumer resumes after the id of the event it saw last
        res = run_cli("events", "--run", run.id, "--json", "--since", all_events[cut]["id"])
        # Then it gets exactly the events after it, nothing repeated, nothing skipped
        assert _json_lines(res.stdout) == all_events[cut + 1 :]


def test_the_global_stream_resumes_after_an_id_across_runs(write_workflow):
    # Given the id of the newest global event before two runs start
    before = list(events.read())
    mark = before[-1].id if before else "0"
    runs = [
        submit(write_workflow(TWO_STEPS.format(name=f"g{i}", code=0), f"g{i}.yaml")) for i in (1, 2)
    ]
    for run in runs:
        run.wait(timeout=60)
    # When reading the global stream after that id
    res = run_cli("events", "--since", mark)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # Then each line starts with its stream id and names its run; both runs are complete
    ids = [_order(line.split()[0]) for line in lines]
    assert ids == sorted(ids)
    assert ids[0] > _order(mark)
    for run in runs:
        mine = [line for line in lines if f"run={run.id}" in line]
        assert len(mine) == 6
        assert "workflow_succeeded" in mine[-1]


def test_events_carry_run_workflow_step_attempt_and_exit_code(write_workflow):
    run = submit(write_workflow(TWO_STEPS.format(name="fields", code=4)))
    assert run.wait(timeout=60).status == "failed"
    got = {(e.type, e.step): e for e in events.read(run.id)}
    failed = got[("step_failed", "second")]
    assert (failed.run_id, failed.workflow, failed.attempt, failed.exit_code) == (
        run.id,
        "fields",
        1,
        4,
    )
    assert failed.reason == "exit_code"
    assert failed.ts.endswith("Z")
    assert got[("step_succeeded", "first")].exit_code == 0
    assert got[("workflow_failed", None)].workflow == "fields"


def test_python_consumers_can_react_to_step_failed_as_it_happens(write_workflow):
    # Given a consumer following the global stream from now on, for step_failed only
    seen: list[events.Event] = []
    ready = threading.Event()

    def consume() -> None:
        stream = events.follow(since=events.LATEST, types={"step_failed"}, timeout=60)
        ready.set()
        for event in stream:
            seen.append(event)
            if event.workflow == "reacting":
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    ready.wait(10)
    # When a run fails
    run = submit(write_workflow(TWO_STEPS.format(name="reacting", code=7)))
    consumer.join(60)
    # Then the consumer got the failure, with what it needs to act on it
    assert seen, "consumer got no step_failed event"
    assert (seen[-1].run_id, seen[-1].step, seen[-1].exit_code) == (run.id, "second", 7)
    assert all(e.type == "step_failed" for e in seen)


def test_following_a_run_stops_at_its_end(write_workflow):
    run = submit(write_workflow(TWO_STEPS.format(name="follow-end", code=0)))
    res = run_cli("events", "--run", run.id, "--follow")
    assert res.returncode == 0, res.stderr
    assert "workflow_succeeded" in res.stdout.splitlines()[-1]
    assert [e.type for e in events.follow(run.id)][-1] == "workflow_succeeded"


def test_events_refuse_a_bad_since_and_an_unknown_run():
    bad = run_cli("events", "--since", "yesterday")
    assert bad.returncode == 2
    assert "not an event id" in bad.stderr
    with pytest.raises(InvalidOperation):
        list(events.read(since="nope"))
    missing = run_cli("events", "--run", "no-such-run")
    assert missing.returncode == 4
    with pytest.raises(RunNotFound):
        list(events.follow("no-such-run"))
