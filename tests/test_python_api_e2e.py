"""The Python API end to end on a real worker: async submit/wait/events, typed records,
``Run.logs()``/``Run.events()`` and workflows given as a dict or a ``Workflow``."""

from __future__ import annotations

import asyncio
import json

import pytest

from runbook_celery import (
    InvalidDefinition,
    RunLogs,
    Step,
    WaitTimeout,
    Workflow,
    asubmit,
    rerun,
    submit,
)
from runbook_celery.store.events import EventType, FailureReason, RunStatus, StepStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

FAILING = {
    "name": "py-api",
    "steps": [
        {"id": "hello", "run": "echo hi; echo 'out=1' >> $RUNBOOK_OUTPUT"},
        {"id": "boom", "run": "echo bad >&2; exit 3", "needs": ["hello"]},
    ],
}


def test_an_async_test_submits_waits_and_follows_the_events_of_a_run(worker):
    async def main() -> tuple[list[str], object, object]:
        run = await asubmit(
            Workflow(
                name="py-async",
                steps=[
                    Step(id="a", run="echo one"),
                    Step(id="b", run="echo two", needs=["a"]),
                ],
            )
        )
        # both at once on one loop: the follow and the wait share no thread
        seen: list[str] = []

        async def follow() -> None:
            async for event in run.events_async():
                seen.append(event.type)

        record, _ = await asyncio.gather(run.wait_async(timeout=60), follow())
        again = await run.wait_async(timeout=1)  # an ended run: returns at once
        return seen, record, again

    seen, record, again = asyncio.run(main())
    assert record.status == "succeeded" and record.status is RunStatus.SUCCEEDED
    assert again == record
    assert seen[0] == EventType.WORKFLOW_STARTED
    assert seen[-1] == EventType.WORKFLOW_SUCCEEDED
    assert seen.count("step_succeeded") == 2


def test_wait_async_times_out_and_the_run_goes_on(worker):
    async def main() -> None:
        run = await asubmit({"name": "py-slow", "steps": [{"id": "s", "run": "sleep 30"}]})
        with pytest.raises(WaitTimeout):
            await run.wait_async(timeout=0.5)
        assert not run.status().finished
        run.cancel()
        record = await run.wait_async(timeout=60)
        assert record.status == RunStatus.CANCELLED

    asyncio.run(main())


def test_a_dict_workflow_runs_and_records_are_typed_logs_and_events_readable(worker):
    run = submit(FAILING)
    record = run.wait(timeout=60)
    assert record.status == "failed" and type(record.status) is RunStatus
    hello, boom = record.steps["hello"], record.steps["boom"]
    assert hello.status == StepStatus.SUCCEEDED and hello.outputs == {"out": "1"}
    assert boom.status is StepStatus.FAILED and boom.reason is FailureReason.EXIT_CODE
    # the JSON shape is unchanged: plain strings
    data = json.loads(json.dumps(record.to_dict()))
    assert data["status"] == "failed" and data["steps"]["boom"]["reason"] == "exit_code"
    assert type(record.to_dict()["steps"]["boom"]["status"]) is str

    logs = run.logs()
    assert isinstance(logs, RunLogs)
    assert [(x.step, x.stream, x.text) for x in logs.lines] == [
        ("hello", "out", "hi"),
        ("boom", "err", "bad"),
    ]
    assert logs.dropped == []
    assert run.logs("boom").text() == "bad\n"

    types = [e.type for e in run.events()]
    assert types[0] == "workflow_started" and types[-1] == "workflow_failed"
    assert [e.step for e in run.events(types={"step_failed"})] == ["boom"]

    again = rerun(run.id, from_failed=True).wait(timeout=60)
    assert again.steps["hello"].reused and again.status == "failed"


def test_run_logs_says_what_the_caps_dropped(worker):
    many = "seq -f 'line %.0f' 1 12000"  # past the worker's default cap of 10,000 lines
    run = submit({"name": "py-logs", "steps": [{"id": "loud", "run": many}]})
    assert run.wait(timeout=60).succeeded
    logs = run.logs()
    kept = len(logs.lines)
    assert logs.lines[-1].text == "line 12000"
    assert sum(g.dropped for g in logs.dropped) == 12000 - kept > 0


def test_a_dict_with_a_mistake_names_its_path_and_records_nothing():
    bad = {"name": "py-bad", "steps": [{"id": "a", "run": "true", "needs": ["nope"]}]}
    with pytest.raises(InvalidDefinition) as caught:
        submit(bad)
    assert "steps[0].needs" in str(caught.value)
    with pytest.raises(InvalidDefinition) as caught:
        submit({"name": "py-bad", "steps": [{"id": "a", "run": "true", "retries": "x"}]})
    assert "steps[0].retries" in str(caught.value)
