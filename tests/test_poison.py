"""A poison message never stops a worker, on Redis or on RabbitMQ.

Malformed messages are put straight into a worker's queue, as a broken or hostile producer
would: raw items pushed onto the Redis list kombu pops, raw publishes on RabbitMQ. Each one
used to make the worker exit with "Unrecoverable error" (or be dropped with a log line at
best), and the message was restored at shutdown, so the next worker died on it too. Now
each goes to the dead letters with its reason, and the worker goes on to run a workflow;
so does a worker started after it.

Synchronisation without sleeping: the poison waits on the top-priority list of the queue
(kombu priority 0 = our 9) before the workflow is triggered, and the workflow's steps are
published at the default priority, so a worker pops every poison message before the first
step; when the run has finished, every poison message has been handled.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis
from conftest import PREFIX, QUEUE, WorkerProcess, run_cli
from private_redis import PrivateWorker, RedisServer, private_env
from test_brokers import AMQP_URL, AmqpWorker, _amqp_answers, _delete_amqp_queue

from runbook_celery.store.deadletter import DeadLetter, DeadLetters

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUN = uuid.uuid4().hex
GOOD_HEADERS = {
    "lang": "py",
    "task": "runbook.step",
    "root_id": None,
    "parent_id": None,
    "group": None,
    "retries": 0,
    "argsrepr": "",
    "kwargsrepr": "",
    "origin": "test",
    "shadow": None,
    "eta": None,
    "expires": None,
}
WORKFLOW = """\
name: after-poison
steps:
  - id: a
    run: echo "v=1" >> "$RUNBOOK_OUTPUT"
  - id: b
    needs: [a]
    run: test "${{ steps.a.outputs.v }}" = 1
"""


@dataclass(frozen=True)
class Poison:
    """One malformed message: a task body and headers, or (Redis only) a whole raw item."""

    name: str
    reason: str  # a fragment of the reason its dead letter must give
    body: bytes = b""
    headers: dict[str, Any] | None = field(default_factory=lambda: dict(GOOD_HEADERS))
    content_type: str = "application/json"
    raw_item: Callable[[str, str], bytes] | None = None  # (queue, marker) -> the list item
    with_id: bool = True  # give it a task id (the marker) when it names a task
    marker: str = ""

    def marked(self, batch: str) -> Poison:
        """A copy carrying a unique marker: as its task id, and in its body."""
        marker = f"{self.name}-{batch}-{uuid.uuid4().hex[:8]}"
        headers = None if self.headers is None else {**self.headers}
        if self.with_id and headers and "task" in headers and "id" not in headers:
            headers["id"] = marker
        body = self.body.replace(b"MARKER", marker.encode())
        return replace(self, marker=marker, headers=headers, body=body)

    def item(self, queue: str) -> bytes:
        """The item kombu's Redis transport pops for this message."""
        if self.raw_item is not None:
            return self.raw_item(queue, self.marker)
        return envelope(queue, self.body, self.headers, self.content_type)


def envelope(
    queue: str,
    body: bytes,
    headers: Any,
    content_type: str = "application/json",
    *,
    encoded_body: str | None = None,
    properties: dict[str, Any] | None = None,
) -> bytes:
    """A kombu Redis envelope (what `_put` writes), with any part replaceable."""
    props = {
        "body_encoding": "base64",
        "delivery_info": {"exchange": queue, "routing_key": queue},
        "delivery_mode": 2,
        "delivery_tag": str(uuid.uuid4()),
        "priority": 0,
    }
    props.update(properties or {})
    return json.dumps(
        {
            "body": base64.b64encode(body).decode() if encoded_body is None else encoded_body,
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": props,
        }
    ).encode()


def _args(*args: Any, kwargs: dict[str, Any] | None = None) -> bytes:
    return json.dumps([list(args), kwargs or {}, {"callbacks": None, "chain": None}]).encode()


# Messages Celery receives and cannot use: on both brokers.
CELERY_POISONS = [
    Poison("body-not-json", "cannot decode the body", b"{{{MARKER"),
    Poison("body-an-object", "not [args, kwargs, embed]", b'{"MARKER": 1}'),
    Poison("body-a-string", "not [args, kwargs, embed]", b'"MARKER"'),
    Poison("three-args", "got 3 args", _args(RUN, "s", "MARKER")),
    Poison("int-args", "run_id is 1", _args(1, 2)),
    Poison("oversized-arg", "characters)", _args("r" * 200_000, "s")),
    Poison("colon-in-run-id", "run_id is 'abc:step:s'", _args("abc:step:s", "s")),
    Poison("kwargs", "1 kwargs", _args(RUN, kwargs={"step_id": "s"})),
    Poison("no-headers", "no 'task' and 'id' headers", _args("MARKER", "s"), headers={}),
    Poison(
        "protocol-1",
        "no 'task' and 'id' headers",
        json.dumps({"task": "runbook.step", "id": "MARKER", "args": [RUN, "s"]}).encode(),
        headers={},
    ),
    Poison(
        "unknown-task",
        "unknown task 'evil.task'",
        b"[[], {}, {}]",
        headers={**GOOD_HEADERS, "task": "evil.task"},
    ),
    Poison(
        "unknown-task-without-id",
        "no 'task' and 'id' headers",
        _args("MARKER"),
        headers={"task": "evil.task"},
        with_id=False,
    ),
    Poison("pickle", "pickle", b"MARKER", content_type="application/x-python-serialize"),
    Poison(
        "task-name-a-list",
        "no 'task' and 'id' headers",
        _args("MARKER"),
        headers={**GOOD_HEADERS, "task": ["runbook.step"]},
    ),
    Poison(
        "id-not-text",
        "no 'task' and 'id' headers",
        _args("MARKER"),
        headers={**GOOD_HEADERS, "id": 5},
    ),
    Poison(
        "timelimit-not-a-pair",
        "'timelimit'",
        _args(RUN, "s"),
        headers={**GOOD_HEADERS, "timelimit": 5},
    ),
]

# Items kombu's Redis transport could not even turn into a message.
REDIS_POISONS = [
    Poison("not-json", "not JSON", raw_item=lambda q, m: f"not json {m}".encode()),
    Poison("not-utf8", "not JSON", raw_item=lambda q, m: b"\xff\xfe" + m.encode()),
    Poison("a-json-list", "not an object", raw_item=lambda q, m: json.dumps([m]).encode()),
    Poison(
        "bad-base64",
        "not valid base64",
        raw_item=lambda q, m: envelope(
            q, b"", {**GOOD_HEADERS, "id": m}, encoded_body="!!!not base64$$$"
        ),
    ),
    Poison(
        "no-delivery-tag",
        "no delivery tag",
        raw_item=lambda q, m: envelope(q, b"[]", {"id": m}, properties={"delivery_tag": None}),
    ),
    Poison(
        "headers-a-list",
        "headers are not an object",
        raw_item=lambda q, m: envelope(q, _args(RUN, "s"), [m]),
    ),
]


def _letters(redis_client, prefix: str = PREFIX) -> list[DeadLetter]:  # type: ignore[no-untyped-def]
    return DeadLetters(redis_client, prefix).list()


def _letter_for(letters: list[DeadLetter], poison: Poison) -> list[DeadLetter]:
    return [
        d for d in letters if d.task_id == poison.marker or poison.marker.encode() in d.raw_body()
    ]


def _assert_dead_lettered(  # type: ignore[no-untyped-def]
    redis_client, poisons: list[Poison], queue: str, prefix: str = PREFIX
) -> None:
    letters = _letters(redis_client, prefix)
    for poison in poisons:
        found = _letter_for(letters, poison)
        assert len(found) == 1, f"{poison.name}: {len(found)} dead letters"
        assert poison.reason in found[0].reason, (poison.name, found[0].reason)
        assert found[0].queue == queue, poison.name


def _run_workflow(env: dict[str, str], write_workflow) -> None:  # type: ignore[no-untyped-def]
    """A normal workflow runs to success on the queue the poison came through."""
    path = write_workflow(WORKFLOW, f"after-{uuid.uuid4().hex[:6]}.yaml")
    res = run_cli("trigger", str(path), "--wait", "--json", env=env, timeout=90)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert json.loads(res.stdout)["status"] == "succeeded"


def _assert_survived(worker: WorkerProcess, poisons: list[Poison], queue: str) -> None:
    assert worker.proc.poll() is None, "the worker died"
    code = worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert code == 0, log[-3000:]
    assert log.count(f"dead letter: message from queue {queue} refused") == len(poisons)


# ---------------------------------------------------------------- Redis


def _push_redis(redis_client, queue: str, poisons: list[Poison]) -> None:  # type: ignore[no-untyped-def]
    for poison in poisons:
        redis_client.lpush(queue, poison.item(queue))  # the top-priority list of the queue


def test_on_redis_poison_messages_become_dead_letters_and_workers_run_on(
    redis_client, write_workflow
):
    queue = f"{QUEUE}-poison"
    env = {"RUNBOOK_QUEUE": queue}
    poisons = REDIS_POISONS + CELERY_POISONS
    # Given poison waiting in the queue before any worker starts
    first = [p.marked("first") for p in poisons]
    _push_redis(redis_client, queue, first)
    worker = WorkerProcess("poison-redis-1", queues=queue, concurrency=2, env=env)
    try:
        # Then the worker refuses each, and runs a normal workflow after them
        _run_workflow(env, write_workflow)
    finally:
        _assert_survived(worker, first, queue)
    _assert_dead_lettered(redis_client, first, queue)
    # and nothing was left behind or restored at shutdown for the next worker to choke on
    lists = [queue, *(f"{queue}:{n}" for n in range(1, 10))]
    assert sum(redis_client.llen(key) for key in lists) == 0
    unacked = b"".join(redis_client.hvals("unacked"))
    assert not any(p.marker.encode() in unacked for p in first)

    # When more poison arrives and another worker starts
    second = [p.marked("second") for p in poisons]
    _push_redis(redis_client, queue, second)
    worker = WorkerProcess("poison-redis-2", queues=queue, concurrency=2, env=env)
    try:
        _run_workflow(env, write_workflow)
    finally:
        _assert_survived(worker, second, queue)
    # Then it survives too, and the first batch was never delivered again
    _assert_dead_lettered(redis_client, first + second, queue)


# ---------------------------------------------------------------- RabbitMQ


@pytest.fixture
def amqp_queue(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    why = _amqp_answers(AMQP_URL)
    if why is not None:
        pytest.fail(f"RabbitMQ at {AMQP_URL} does not answer: {why}")
    queue = f"{QUEUE}-poison-amqp"
    try:
        yield queue
    finally:
        _delete_amqp_queue(queue)


def _publish_amqp(queue: str, poisons: list[Poison]) -> None:
    """Raw publishes: bytes and headers exactly as given, nothing serialized by kombu."""
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=3) as conn:
        producer = conn.Producer()
        for poison in poisons:
            producer.publish(
                poison.body,
                exchange="",
                routing_key=queue,
                headers=poison.headers,
                content_type=poison.content_type,
                content_encoding="utf-8",
                priority=9,
                delivery_mode=2,
            )


def test_on_rabbitmq_poison_messages_become_dead_letters_and_workers_run_on(
    redis_client, write_workflow, amqp_queue: str
):
    queue = amqp_queue
    env = {"RUNBOOK_QUEUE": queue, "RUNBOOK_BROKER_URL": AMQP_URL}
    # Given a worker on RabbitMQ (it declares the queue), and poison published to its queue
    worker: WorkerProcess = AmqpWorker("poison-amqp-1", queues=queue, concurrency=2, env=env)
    first = [p.marked("first") for p in CELERY_POISONS]
    try:
        _publish_amqp(queue, first)
        # Then the worker refuses each, and runs a normal workflow after them
        _run_workflow(env, write_workflow)
    finally:
        _assert_survived(worker, first, queue)
    _assert_dead_lettered(redis_client, first, queue)

    # When poison waits in the queue while no worker runs, and a worker starts
    second = [p.marked("second") for p in CELERY_POISONS]
    _publish_amqp(queue, second)
    worker = AmqpWorker("poison-amqp-2", queues=queue, concurrency=2, env=env)
    try:
        _run_workflow(env, write_workflow)
    finally:
        _assert_survived(worker, second, queue)
    # Then it survives too, and nothing was delivered twice
    _assert_dead_lettered(redis_client, first + second, queue)


def test_after_a_redis_restart_poison_still_becomes_a_dead_letter(tmp_path, write_workflow):
    # Given a worker whose Redis (broker and store) restarts under it
    server = RedisServer(tmp_path)
    env = private_env(server.url)
    client = redis.Redis.from_url(server.url)
    worker = PrivateWorker(
        server.url, name="poison-restart", concurrency=2, queues="runbook", env=env
    )
    poisons = [p.marked("restart") for p in REDIS_POISONS]
    try:
        server.stop()
        server.start()
        _run_workflow(env, write_workflow)  # consuming again, on a new connection
        # When poison arrives
        _push_redis(client, "runbook", poisons)
        _run_workflow(env, write_workflow)
        # Then the envelope check was in place on the new connection too
        _assert_dead_lettered(client, poisons, "runbook", prefix="runbook")
        _assert_survived(worker, poisons, "runbook")
    finally:
        worker.stop()
        client.close()
        server.stop()
