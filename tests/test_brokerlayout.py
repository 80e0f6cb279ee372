"""Recovery finds and puts back kombu's messages wherever kombu's transport options put them.

On real Redis, with messages that kombu's own Redis transport published and delivered (and
whose consumer then died, leaving them unacknowledged), under our app's layout and under
layouts that differ in every name ``BrokerLayout`` reads: a global key prefix, other
unacknowledged keys, kombu's default priority steps and separator. The proof that a message
went back where kombu expects it: kombu, with the same options, delivers it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import SESSION, TEST_REDIS_URL
from kombu import Connection, Exchange, Queue
from kombu.transport.redis import Channel

from runbook_celery.definition.queuenames import RESERVED_NAMES, queue_name_problem
from runbook_celery.engine import recovery
from runbook_celery.engine.app import app
from runbook_celery.engine.brokerlayout import (
    BrokerLayout,
    broker_layout,
    captured_publish,
    message_priority,
)

pytestmark = pytest.mark.timeout(60)

PRIORITIES = (0, 3, 5, 9)  # kombu's scale: 0 is served first


def _ours() -> dict[str, Any]:
    return dict(app.conf.broker_transport_options)


def _prefixed() -> dict[str, Any]:
    return {
        **_ours(),
        "global_keyprefix": f"rbtest-pfx-{SESSION}:",
        "unacked_key": f"rbtest-unacked-{SESSION}",
        "unacked_index_key": f"rbtest-unacked-index-{SESSION}",
        "unacked_mutex_key": f"rbtest-unacked-mutex-{SESSION}",
    }


def _kombu_defaults() -> dict[str, Any]:
    """kombu's own priority steps (0, 3, 6, 9) and separator, with other unacked keys."""
    return {
        "visibility_timeout": 3600,
        "unacked_key": f"rbtest-kunacked-{SESSION}",
        "unacked_index_key": f"rbtest-kunacked-index-{SESSION}",
    }


LAYOUTS = {"ours": _ours, "prefixed": _prefixed, "kombu-defaults": _kombu_defaults}


def test_the_default_layout_is_kombus_channel():
    layout = BrokerLayout.from_options({})
    assert layout.unacked == Channel.unacked_key
    assert layout.unacked_index == Channel.unacked_index_key
    assert layout.unacked_mutex_key == Channel.unacked_mutex_key
    assert layout.priority_steps == tuple(Channel.priority_steps)
    assert (layout.sep, layout.global_keyprefix) == (Channel.sep, "")


def test_queuenames_reserves_kombus_default_key_names():
    """definition/ may not import kombu: its constant must agree with kombu's defaults."""
    assert BrokerLayout().reserved_names() <= RESERVED_NAMES
    for name in BrokerLayout().reserved_names():
        assert queue_name_problem(name) is not None


def test_our_apps_layout_is_the_one_queuenames_assumes():
    layout = broker_layout()
    assert layout.sep == ":"  # queue names may not contain it (queuenames.py)
    assert layout.priority_steps == tuple(range(10))
    assert layout.global_keyprefix == ""
    assert layout.queue_keys("q") == ["q", *(f"q:{p}" for p in range(1, 10))]


def test_names_of_lists_and_priorities_follow_kombu():
    layout = BrokerLayout.from_options({"global_keyprefix": "p/", "sep": "#"})
    assert layout.queue_key("q", 0) == "p/q"
    assert layout.queue_key("q", 5) == "p/q#3"  # kombu's default steps 0, 3, 6, 9
    assert layout.queue_keys("q") == ["p/q", "p/q#3", "p/q#6", "p/q#9"]
    assert layout.queue_of(b"p/q#6") == "q"
    assert layout.queue_of("p/a-b") == "a-b"
    assert message_priority({"properties": {"priority": 42}}) == 9
    assert message_priority({"properties": {"priority": None}}) == 0
    assert message_priority({}) == 0


@pytest.fixture(params=sorted(LAYOUTS))
def left_unacked(request: Any, redis_client: redis.Redis) -> Iterator[tuple[dict, str, dict]]:
    """Messages of several priorities that kombu published and delivered under a layout,
    and never acknowledged (their consumer died): (options, queue, task id -> priority)."""
    options = LAYOUTS[request.param]()
    layout = BrokerLayout.from_options(options)
    name = f"rbtest-layout-{SESSION}-{uuid.uuid4().hex[:6]}"
    exchange = Exchange(name, type="direct")
    queue = Queue(name, exchange, routing_key=name)
    sent = {uuid.uuid4().hex: p for p in PRIORITIES}
    with Connection(TEST_REDIS_URL, transport_options=options) as conn:
        producer = conn.Producer()
        for task_id, priority in sent.items():
            producer.publish(
                {"n": 1},
                exchange=exchange,
                routing_key=name,
                declare=[queue],
                headers={"id": task_id},
                priority=priority,
            )
        channel = conn.channel()
        for _ in sent:
            assert channel.basic_get(name) is not None  # recorded as unacknowledged
        channel.qos.restore_at_shutdown = False  # the consumer dies: no restore on close
        channel.close()
    yield options, name, sent
    prefix = layout.global_keyprefix
    redis_client.delete(*layout.queue_keys(name), layout.unacked, layout.unacked_index)
    for key in redis_client.scan_iter(match=f"{prefix}_kombu.binding*{name}*"):
        redis_client.delete(key)


def test_recovery_restores_and_finds_kombus_messages_under_the_layout(
    redis_client: redis.Redis, left_unacked: tuple[dict, str, dict]
) -> None:
    options, name, sent = left_unacked
    layout = BrokerLayout.from_options(options)
    # the messages are where the layout says kombu keeps unacknowledged ones
    assert redis_client.hlen(layout.unacked) >= len(sent)
    assert recovery.queued(redis_client, name, sent, layout) == set()
    found = recovery._unacked(redis_client, set(sent), layout)
    assert set(found) == set(sent)
    for task_id in sent:
        assert recovery.restore_unacked(redis_client, task_id, layout)
        assert not recovery.restore_unacked(redis_client, task_id, layout)  # once only
    assert recovery.queued(redis_client, name, sent, layout) == set(sent)
    assert all(recovery.message_queued(redis_client, name, t, layout) for t in sent)
    assert redis_client.zcard(layout.unacked_index) == redis_client.hlen(layout.unacked)
    # kombu, with the same options, delivers them again, the most urgent list first
    with Connection(TEST_REDIS_URL, transport_options=options) as conn:
        channel = conn.channel()
        got = []
        for _ in sent:
            message = channel.basic_get(name, no_ack=True)
            assert message is not None
            got.append((message.headers["id"], message.headers.get("redelivered")))
        assert channel.basic_get(name, no_ack=True) is None
        channel.close()
    steps = [layout.priority_step(sent[t]) for t, _ in got]
    assert steps == sorted(steps)
    assert all(redelivered for _, redelivered in got)


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_a_captured_publish_is_what_kombu_delivers_once_pushed(
    layout_name: str, redis_client: redis.Redis
) -> None:
    """captured_publish (a chain link's FINISH pushes what it yields): nothing is sent
    while capturing, and the (key, payload) pushed by hand is delivered by kombu, with the
    same options, as the message published, in kombu's priority order."""
    options = LAYOUTS[layout_name]()
    layout = BrokerLayout.from_options(options)
    name = f"rbtest-capture-{SESSION}-{uuid.uuid4().hex[:6]}"
    exchange = Exchange(name, type="direct")
    queue = Queue(name, exchange, routing_key=name)
    sent = {p: uuid.uuid4().hex for p in reversed(PRIORITIES)}  # pushed highest first
    try:
        with Connection(TEST_REDIS_URL, transport_options=options) as conn:
            producer = conn.Producer()
            queued = lambda: sum(redis_client.llen(k) for k in layout.queue_keys(name))  # noqa: E731
            for priority, task_id in sent.items():
                before = queued()
                with captured_publish(producer.channel) as puts:
                    producer.publish(
                        {"n": priority},
                        exchange=exchange,
                        routing_key=name,
                        declare=[queue],
                        headers={"id": task_id},
                        priority=priority,
                    )
                assert puts is not None and len(puts) == 1
                assert queued() == before  # captured, not sent
                key, payload = puts[0]
                assert key == layout.queue_key(name, priority)
                redis_client.lpush(key, payload)
            channel = conn.channel()
            got = []
            for _ in sent:
                message = channel.basic_get(name, no_ack=True)
                assert message is not None
                got.append((message.headers["id"], message.decode()))
            channel.close()
    finally:
        redis_client.delete(*layout.queue_keys(name))
        prefix = layout.global_keyprefix
        for key in redis_client.scan_iter(match=f"{prefix}_kombu.binding*{name}*"):
            redis_client.delete(key)
    # kombu serves the lists of lower priority steps first, each list first in, first out
    pushed = list(sent)
    order = sorted(pushed, key=lambda p: (layout.priority_step(p), pushed.index(p)))
    assert got == [(sent[p], {"n": p}) for p in order]


def test_captured_publish_leaves_a_non_redis_channel_alone() -> None:
    with Connection("memory://") as conn, captured_publish(conn.default_channel) as puts:
        assert puts is None
