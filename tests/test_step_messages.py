"""What a step's message carries, as it lands on a Redis queue: Flower's ``run=<id>
step=<id>`` in its headers, and the run's id no more often than Celery needs it."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain
from conftest import QUEUE

from runbook_celery.engine import dispatch
from runbook_celery.engine.app import FANIN_TASK, STEP_TASK, app

RUN = uuid.uuid4().hex
SNAPSHOT = {"workflow": "wf", "mode": "canvas", "steps": [{"id": f"s{i}"} for i in range(3)]}


@pytest.fixture
def queue(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    name = f"{QUEUE}-messages-{uuid.uuid4().hex[:6]}"
    with app.connection_for_write() as conn:  # bound, as a worker would have done
        app.amqp.queues.select_add(name)
        app.amqp.queues[name].bind(conn.default_channel).declare()
    yield name
    redis_client.delete(name, *(f"{name}:{n}" for n in range(1, 10)))  # one list per priority


def _messages(redis_client, queue: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    lists = [queue, *(f"{queue}:{n}" for n in range(1, 10))]
    return [json.loads(item) for key in lists for item in redis_client.lrange(key, 0, -1)]


def _sig(step: str):  # type: ignore[no-untyped-def]
    return dispatch.step_signature(SNAPSHOT, RUN, step).set(queue=None)


def test_a_step_message_says_run_and_step_in_its_headers_only(redis_client, queue):
    _sig("s1").apply_async(root_id=RUN, queue=queue)
    (message,) = _messages(redis_client, queue)
    headers, properties = message["headers"], message["properties"]
    assert headers["argsrepr"] == f"run={RUN} step=s1"
    assert headers["kwargsrepr"] == "{}"
    assert headers["shadow"] == "wf.s1" and headers["id"] == f"{RUN}.s1"
    assert "argsrepr" not in properties and "kwargsrepr" not in properties
    # the run's id, besides the step's argument in the body: its task id, its root id,
    # Flower's argsrepr and Celery's correlation id (the task id again), nothing else
    assert json.dumps(message).count(RUN) == 4  # the body is base64: its copy not counted
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0] == [RUN, "s1"]


def test_a_chain_carries_no_argsrepr_in_the_signatures_it_holds(redis_client, queue):
    chain(*[_sig(f"s{i}") for i in range(3)]).apply_async(root_id=RUN, queue=queue)
    (message,) = _messages(redis_client, queue)
    assert message["headers"]["argsrepr"] == f"run={RUN} step=s0"
    body = json.loads(base64.b64decode(message["body"]))
    held = body[2]["chain"]
    assert [s["args"] for s in held] == [[RUN, "s2"], [RUN, "s1"]]
    for sig in held:
        assert "argsrepr" not in sig["options"] and "kwargsrepr" not in sig["options"]


def test_a_message_given_its_own_argsrepr_keeps_it(redis_client, queue):
    app.send_task(STEP_TASK, args=(RUN, "s1"), queue=queue, argsrepr="run=x")
    (message,) = _messages(redis_client, queue)
    assert message["headers"]["argsrepr"] == "run=x"


def test_the_join_of_a_step_that_names_a_queue_goes_to_that_queue() -> None:
    """A fanned-out step's join (``runbook.fan_in``) is routed like its instances: a run
    whose steps all name a queue has no worker on the default queue to join them (such a
    run waited for ever, its join re-sent by the reconciler to a queue nobody consumed)."""
    snapshot = {"workflow": "wf", "mode": "canvas", "steps": [{"id": "m", "queue": "gpu"}]}
    join = dispatch.step_signature(snapshot, RUN, "m", task=FANIN_TASK)
    step = dispatch.step_signature(snapshot, RUN, "m")
    assert join.options["queue"] == step.options["queue"] == "gpu"
    plain = {"workflow": "wf", "mode": "canvas", "steps": [{"id": "m"}]}
    assert "queue" not in dispatch.step_signature(plain, RUN, "m", task=FANIN_TASK).options


def test_a_join_goes_ahead_of_the_instances_still_queued() -> None:
    """A join is sent at the top of our priority scale, whatever the step's own priority:
    after a cancel it would otherwise wait behind a window of queued instance messages
    (each only a replay), and the run's end with it."""
    for spec in ({"id": "m"}, {"id": "m", "priority": 0}, {"id": "m", "priority": 7}):
        snapshot = {"workflow": "wf", "mode": "canvas", "steps": [spec]}
        join = dispatch.step_signature(snapshot, RUN, "m", task=FANIN_TASK)
        assert join.options["priority"] == dispatch.broker_priority(dispatch.MOST_URGENT)
    instance = dispatch.step_signature(
        {"workflow": "wf", "mode": "canvas", "steps": [{"id": "m", "priority": 7}]}, RUN, "m[0]"
    )
    assert instance.options["priority"] == dispatch.broker_priority(7)
