"""The checks that tell a poison message from a real one, and the dead-letter list.

The checks run on every message a worker receives, so they are tried on real messages
(published by our app) as well as on malformed ones: a false positive would throw away a
step. End-to-end behaviour with a real worker is in test_poison.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import fakeredis
import pytest
from conftest import PREFIX, QUEUE, run_cli

from runbook_celery.engine.app import FANIN_TASK, RUN_TIMEOUT_TASK, STEP_TASK, app
from runbook_celery.engine.poison import body_problem, envelope_problem, header_problem
from runbook_celery.store.deadletter import BODY_LIMIT, DeadLetters, make_dead_letter, printable

pytestmark = pytest.mark.timeout(60)

RUN = uuid.uuid4().hex


@pytest.fixture
def real_envelope(redis_client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A step message exactly as our app puts it on a Redis queue (then removed again)."""
    queue = f"{QUEUE}-envelope-{uuid.uuid4().hex[:6]}"
    with app.connection_for_write() as conn:  # bound, as a worker would have done
        app.amqp.queues.select_add(queue)
        app.amqp.queues[queue].bind(conn.default_channel).declare()
    app.send_task(
        STEP_TASK, args=(RUN, "build[2]"), queue=queue, shadow="wf.build", argsrepr="run=x"
    )
    lists = [queue, *(f"{queue}:{n}" for n in range(1, 10))]  # one list per priority
    (item,) = [item for key in lists for item in redis_client.lrange(key, 0, -1)]
    # (keys naming the session queue are removed with the session's other keys)
    redis_client.delete(*lists)
    return {"raw": item, "payload": json.loads(item)}


def test_real_messages_pass_every_check(real_envelope):
    payload = real_envelope["payload"]
    assert envelope_problem(real_envelope["raw"]) is None
    assert header_problem(payload["headers"]) is None
    body = json.loads(base64.b64decode(payload["body"]))
    assert body_problem(STEP_TASK, body) is None
    assert body_problem(FANIN_TASK, [[RUN, "build"], {}, None]) is None
    assert body_problem(RUN_TIMEOUT_TASK, [[RUN], {}, {}]) is None
    assert body_problem("celery.backend_cleanup", [[], {}, {}]) is None


def _with(payload: dict[str, Any], path: tuple[str, ...], value: Any) -> bytes:
    data = json.loads(json.dumps(payload))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(data).encode()


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (None, "the envelope is not JSON"),
        ((("properties",), _DELETE), "no 'properties'"),
        ((("properties", "delivery_tag"), _DELETE), "no delivery tag"),
        ((("properties", "delivery_tag"), {"a": 1}), "no delivery tag"),
        ((("properties", "delivery_info"), "x"), "no delivery info"),
        ((("properties", "delivery_info", "routing_key"), 5), "no delivery info"),
        ((("properties", "priority"), "high"), "priority"),
        ((("properties", "body_encoding"), "rot13"), "not base64"),
        ((("body",), "!!!notbase64$$$"), "not valid base64"),
        ((("body",), 12), "body is not text"),
        ((("headers",), [1, 2]), "headers are not an object"),
        ((("content-type",), ["x"]), "content type"),
    ],
)
def test_malformed_envelopes_are_told_apart(real_envelope, change, reason):
    raw = b"\xff\xfenot json" if change is None else _with(real_envelope["payload"], *change)
    assert reason in (envelope_problem(raw) or "")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"null", b"12"])
def test_an_envelope_must_be_an_object(raw: bytes):
    assert "not an object" in (envelope_problem(raw) or "")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (None, "not a mapping"),
        ([1], "not a mapping"),
        ({}, "no 'task' and 'id' headers"),
        ({"task": ["runbook.step"], "id": "x"}, "no 'task' and 'id' headers"),
        ({"task": "runbook.step", "id": ""}, "no 'task' and 'id' headers"),
        ({"task": "runbook.step", "id": "x", "root_id": 5}, "'root_id' is not text"),
        ({"task": "runbook.step", "id": "x", "retries": "2"}, "'retries'"),
        ({"task": "runbook.step", "id": "x", "timelimit": 5}, "'timelimit'"),
        ({"task": "runbook.step", "id": "x", "timelimit": ["a", None]}, "'timelimit'"),
        ({"task": "runbook.step", "id": "x", "eta": 17}, "'eta'"),
    ],
)
def test_headers_that_are_not_a_task_messages(headers: Any, reason: str):
    assert reason in (header_problem(headers) or "")


@pytest.mark.parametrize(
    ("task", "body", "reason"),
    [
        (STEP_TASK, {"a": 1}, "not [args, kwargs, embed]"),
        (STEP_TASK, [[RUN, "s"], {}], "not [args, kwargs, embed]"),
        (STEP_TASK, [RUN, {}, {}], "args are not a list"),
        (STEP_TASK, [[RUN, "s"], [], {}], "kwargs not a mapping"),
        (STEP_TASK, [[RUN, "s"], {}, "chain"], "embed"),
        (STEP_TASK, [[RUN, "s", "x"], {}, {}], "got 3 args and 0 kwargs"),
        (STEP_TASK, [[RUN], {"step_id": "s"}, {}], "got 1 args and 1 kwargs"),
        (STEP_TASK, [[1, 2], {}, {}], "run_id is 1"),
        (STEP_TASK, [[RUN, None], {}, {}], "step_id is None"),
        (STEP_TASK, [["r" * 100_000, "s"], {}, {}], "(100002 characters)"),
        (STEP_TASK, [["abc:step:build", "s"], {}, {}], "run_id is 'abc:step:build'"),
        (STEP_TASK, [[RUN, "../../etc"], {}, {}], "step_id"),
        (FANIN_TASK, [[RUN, "s[x]"], {}, {}], "step_id"),
        (RUN_TIMEOUT_TASK, [[RUN, "s"], {}, {}], "takes (run_id) as strings"),
    ],
)
def test_bodies_that_do_not_fit_our_tasks(task: str, body: Any, reason: str):
    assert reason in (body_problem(task, body) or "")


def test_a_dead_letter_keeps_a_capped_raw_body():
    letter = make_dead_letter(b"x" * (BODY_LIMIT + 10), "why", "q")
    assert (letter.size, letter.truncated, len(letter.body)) == (BODY_LIMIT + 10, True, BODY_LIMIT)
    binary = make_dead_letter(b"\xff\x00\x01", "why", "q")
    assert binary.body_encoding == "base64" and binary.raw_body() == b"\xff\x00\x01"
    text = make_dead_letter("héllo", "why", None, headers={"task": "t", "id": 7})
    assert (text.body, text.body_encoding, text.task, text.task_id) == ("héllo", "utf-8", "t", "7")


def test_a_dead_letter_escapes_what_would_drive_a_terminal():
    letter = make_dead_letter(b"x", "unknown task '\x1b[31mred'", "q\x1b]0;title\x07")
    assert "\x1b" not in letter.reason + (letter.queue or "")
    assert printable("a\x1b[2Jb\n") == "a\\x1b[2Jb\\n"


def test_the_list_is_capped_newest_first_and_purged_atomically():
    store = DeadLetters(fakeredis.FakeRedis(), "t", limit=3)
    for i in range(5):
        store.add(make_dead_letter(f"m{i}".encode(), f"r{i}", "q"))
    assert [d.body for d in store.list()] == ["m4", "m3", "m2"]
    assert [d.reason for d in store.purge()] == ["r4", "r3", "r2"]
    assert store.list() == []


def test_cli_shows_json_and_purges_with_hostile_bodies_escaped(redis_client):
    marker = uuid.uuid4().hex
    store = DeadLetters(redis_client, PREFIX)
    store.add(make_dead_letter(f"\x1b[2J{marker}".encode(), "the envelope is not JSON", "q1"))
    text = run_cli("dead-letters", timeout=30)
    assert text.returncode == 0, text.stderr
    line = next(ln for ln in text.stdout.splitlines() if marker in ln)
    assert "\x1b" not in text.stdout and "\\u001b[2J" in line
    assert "queue=q1  the envelope is not JSON" in text.stdout
    listed = run_cli("dead-letters", "--json", timeout=30)
    entries = [e for e in json.loads(listed.stdout) if marker in e["body"]]
    assert [(e["queue"], e["reason"], e["size"]) for e in entries] == [
        ("q1", "the envelope is not JSON", 4 + len(marker))
    ]
    purged = run_cli("dead-letters", "--purge", timeout=30)
    assert purged.returncode == 0 and marker in purged.stdout
    assert purged.stdout.rstrip().splitlines()[-1].startswith("purged ")
    assert all(marker not in d.body for d in store.list())


def test_cli_exits_3_when_redis_is_unreachable():
    res = run_cli("dead-letters", env={"RUNBOOK_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"})
    assert res.returncode == 3
    assert "unreachable" in res.stderr and "s3cret" not in res.stderr
    assert "Traceback" not in res.stderr
