"""The notifier against real Redis, without a worker: one send per event, takeovers, records.

Events are written to the global stream as the store writes them; senders are fakes that
record what they were asked, except where apprise itself posts to a local receiver.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import PREFIX
from notify_helpers import closed_port, receiver

from runbook_celery.core.settings import get_settings
from runbook_celery.engine import notify, notifysend
from runbook_celery.engine.notify import GROUP, Notifier
from runbook_celery.engine.notifymessage import Message
from runbook_celery.engine.notifysend import apprise_send, deliver
from runbook_celery.store import RunStore

pytestmark = pytest.mark.timeout(60)

SECRET = "tok/3n?S3CRET"


class FakeSender:
    """Records each (url, message); fails the first ``failures`` sends to each URL."""

    def __init__(self, failures: int = 0, error: str = "HTTP 500 from {url}") -> None:
        self.calls: list[tuple[str, Message]] = []
        self.failures = failures
        self.error = error

    def __call__(self, url: str, message: Message) -> str | None:
        self.calls.append((url, message))
        if sum(1 for u, _ in self.calls if u == url) <= self.failures:
            return self.error.format(url=url)
        return None

    @property
    def urls(self) -> list[str]:
        return [u for u, _ in self.calls]


@pytest.fixture
def prefix(redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    p = f"{PREFIX}:nu{uuid.uuid4().hex[:8]}"
    yield p
    for key in redis_client.scan_iter(match=f"{p}:*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def store(redis_client, prefix) -> RunStore:  # type: ignore[no-untyped-def]
    return RunStore(redis_client, prefix, 3600)


def make_notifier(redis_client, prefix: str, sender: Any, **kw: Any) -> Notifier:  # type: ignore[no-untyped-def]
    settings = get_settings().with_(prefix=prefix, flower_url="http://flower.test")
    n = Notifier(redis_client, settings, send=sender, env=kw.pop("env", {"T": SECRET}), **kw)
    n.ensure_group()
    return n


def make_run(store: RunStore, notify_rules: list[dict[str, Any]], run_id: str = "") -> str:
    run_id = run_id or uuid.uuid4().hex
    snapshot = {
        "workflow": "wf",
        "params": {},
        "mode": "dynamic",
        "steps": [{"id": "build"}],
        "secrets": ["T"],
        "notify": notify_rules,
    }
    store.create_run(run_id, snapshot, "sha")
    store.r.hset(
        store.keys.step(run_id, "build"),
        mapping={
            "status": "failed",
            "exit_code": 3,
            "reason": "exit_code",
            "stderr_tail": json.dumps(["boom", f"token {SECRET} refused"]),
        },
    )
    return run_id


def emit(store: RunStore, run_id: str, etype: str, **fields: str) -> str:
    """Write an event as the store's scripts do: to the run's stream and the global one."""
    event = {"type": etype, "run_id": run_id, "workflow": "wf", "ts": "t", **fields}
    store.r.xadd(store.keys.run_events(run_id), event)
    entry = store.r.xadd(store.keys.global_events, event)
    return entry.decode() if isinstance(entry, bytes) else entry


def notifications(store: RunStore, run_id: str | None = None) -> list[dict[str, str]]:
    return [
        f
        for _, f in store.events(run_id)
        if f["type"] in ("notification_sent", "notification_failed")
        and (run_id is None or f["run_id"] == run_id)
    ]


def pending(store: RunStore) -> int:
    return int(store.r.xpending(store.keys.global_events, GROUP)["pending"])


# ---------------------------------------------------------------- one event, one send


def test_an_event_a_run_asked_for_is_sent_to_each_url_and_recorded(redis_client, prefix, store):
    sender = FakeSender()
    notifier = make_notifier(redis_client, prefix, sender)
    rules = [{"on": ["failed"], "urls": ["json://h/a", "json://h/${{ secrets.T }}"]}]
    run_id = make_run(store, rules)
    entry = emit(store, run_id, "workflow_failed")

    assert notifier.poll(block_ms=10) == 1

    assert sender.urls == ["json://h/a", "json://h/tok%2F3n%3FS3CRET"]
    body = sender.calls[0][1].body
    assert "Failed step build: exit code 3, reason exit_code" in body
    assert f"token {SECRET}" not in body and "token *** refused" in body
    assert f"Run page: http://flower.test/runs/{run_id}" in body
    recorded = notifications(store, run_id)
    assert [
        (e["type"], e["target"], e["service"], e["source"], e["attempts"]) for e in recorded
    ] == [
        ("notification_sent", "notify[0].urls[0]", "json", entry, "1"),
        ("notification_sent", "notify[0].urls[1]", "json", entry, "1"),
    ]
    assert all(e["on"] == "failed" for e in recorded)
    assert notifications(store) == recorded  # on the global stream too
    assert pending(store) == 0


def test_events_nobody_asked_for_are_acknowledged_without_sending(redis_client, prefix, store):
    sender = FakeSender()
    notifier = make_notifier(redis_client, prefix, sender)
    asked = make_run(store, [{"on": ["failed"], "urls": ["json://h/a"]}])
    silent = make_run(store, [])
    emit(store, asked, "workflow_started")
    emit(store, asked, "step_succeeded", step="build")
    emit(store, silent, "workflow_failed")
    emit(store, "no-such-run", "workflow_failed")

    assert notifier.poll(block_ms=10) == 4
    assert sender.calls == [] and notifications(store) == []
    assert pending(store) == 0


def test_one_read_takes_a_batch_and_acknowledges_what_asks_nothing_together(
    redis_client, prefix, store
):
    # a step's events are no notification's business: a read takes them in a batch (not one
    # read and one XACK per event), and what a run asked for is still sent
    sender = FakeSender()
    notifier = make_notifier(redis_client, prefix, sender)
    asked = make_run(store, [{"on": ["step_failed"], "urls": ["json://h/a"]}])
    for i in range(40):
        emit(store, asked, "step_started", step=f"s{i}")
        if i % 10 == 9:
            emit(store, asked, "step_failed", step="build")
    xacks = []
    real_xack = notifier.r.xack
    notifier.r.xack = lambda *a: xacks.append(len(a) - 2) or real_xack(*a)  # type: ignore[method-assign]

    assert notifier.poll(block_ms=10) == 44

    assert len(sender.calls) == 4
    assert pending(store) == 0
    assert sorted(xacks) == [1, 1, 1, 1, 40]  # the four sent one by one, the rest at once


def test_each_event_is_sent_by_one_notifier_of_several(redis_client, prefix, store):
    senders = [FakeSender(), FakeSender()]
    notifiers = [
        make_notifier(redis_client, prefix, s, name=f"n{i}") for i, s in enumerate(senders)
    ]
    run_id = make_run(store, [{"on": ["step_failed"], "urls": ["json://h/a"]}])
    entries = [emit(store, run_id, "step_failed", step=f"s{i}") for i in range(25)]

    for _ in range(100):  # each poll takes what is there; notification events come back too
        if sum(n.poll(block_ms=10) for n in notifiers) == 0:
            break

    assert len(senders[0].calls) + len(senders[1].calls) == len(entries)
    sources = [e["source"] for e in notifications(store, run_id)]
    assert sorted(sources) == sorted(entries)
    assert pending(store) == 0


# ---------------------------------------------------------------- notifiers that die


def test_a_dead_notifiers_event_is_taken_over_without_resending_what_it_sent(
    redis_client, prefix, store, monkeypatch
):
    monkeypatch.setattr(notify, "CLAIM_IDLE_MS", 0)
    sender = FakeSender()
    survivor = make_notifier(redis_client, prefix, sender, name="survivor")
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/a", "json://h/b"]}])
    entry = emit(store, run_id, "workflow_failed")
    # a notifier reads the event, records its first URL as sent, and dies
    store.r.xreadgroup(GROUP, "dead", {store.keys.global_events: ">"}, count=1)
    store.r.xadd(
        store.keys.run_events(run_id),
        {
            "type": "notification_sent",
            "run_id": run_id,
            "target": "notify[0].urls[0]",
            "source": entry,
        },
    )

    assert survivor.claim_stale() == 1

    assert sender.urls == ["json://h/b"]
    assert [e["target"] for e in notifications(store, run_id)] == [
        "notify[0].urls[0]",
        "notify[0].urls[1]",
    ]
    assert pending(store) == 0


def test_a_notifier_whose_event_was_taken_over_neither_sends_nor_acknowledges(
    redis_client, prefix, store, monkeypatch
):
    monkeypatch.setattr(notify, "CLAIM_IDLE_MS", 0)
    slow_sender, other_sender = FakeSender(), FakeSender()
    slow = make_notifier(redis_client, prefix, slow_sender, name="slow")
    other = make_notifier(redis_client, prefix, other_sender, name="other")
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/a"]}])
    emit(store, run_id, "workflow_failed")
    ((_, [(entry_id, fields)]),) = store.r.xreadgroup(
        GROUP, "slow", {store.keys.global_events: ">"}, count=1
    )
    other.claim_stale()  # "slow" took too long: "other" sends and acknowledges

    finished = slow.handle(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})

    assert finished is False
    assert slow_sender.calls == [] and len(other_sender.calls) == 1
    assert len(notifications(store, run_id)) == 1


def test_a_stopping_notifier_leaves_its_event_pending_for_another(redis_client, prefix, store):
    sender = FakeSender(failures=1)
    notifier = make_notifier(redis_client, prefix, sender)
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/a"]}])
    emit(store, run_id, "workflow_failed")
    notifier.stop.set()  # the wait before the second attempt returns at once: stopping

    notifier.poll(block_ms=10)

    assert len(sender.calls) == 1 and notifications(store, run_id) == []
    assert pending(store) == 1


def test_consumers_of_notifiers_long_gone_are_forgotten_if_they_hold_nothing(
    redis_client, prefix, store, monkeypatch
):
    monkeypatch.setattr(notify, "DEAD_CONSUMER_MS", -1)
    notifier = make_notifier(redis_client, prefix, FakeSender(), name="alive")
    run_id = make_run(store, [])
    stream = store.keys.global_events
    emit(store, run_id, "workflow_failed")
    notifier.poll(block_ms=10)  # "alive" is a consumer now, holding nothing
    emit(store, run_id, "workflow_failed")
    ((_, [(handled, _fields)]),) = store.r.xreadgroup(GROUP, "gone-empty", {stream: ">"})
    store.r.xack(stream, GROUP, handled)
    emit(store, run_id, "workflow_failed")
    store.r.xreadgroup(GROUP, "gone-holding", {stream: ">"}, count=1)

    assert notifier.forget_dead_consumers() == ["gone-empty"]
    names = {c["name"] for c in store.r.xinfo_consumers(stream, GROUP)}
    assert names == {b"alive", b"gone-holding"}


# ---------------------------------------------------------------- failures


def test_a_failing_url_is_tried_three_times_and_recorded_with_its_error_masked(
    redis_client, prefix, store, monkeypatch
):
    monkeypatch.setattr(notifysend, "RETRY_DELAYS", (0.0, 0.0))
    sender = FakeSender(failures=99, error="HTTP 500 from {url}")
    notifier = make_notifier(redis_client, prefix, sender)
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/x/${{ secrets.T }}"]}])
    emit(store, run_id, "workflow_failed")

    notifier.poll(block_ms=10)

    assert len(sender.calls) == 3
    (failed,) = notifications(store, run_id)
    assert failed["type"] == "notification_failed" and failed["attempts"] == "3"
    assert failed["error"] == "HTTP 500 from json://h/x/***"
    assert pending(store) == 0


def test_a_secret_missing_where_notifications_are_sent_is_a_failed_notification(
    redis_client, prefix, store
):
    sender = FakeSender()
    notifier = make_notifier(redis_client, prefix, sender, env={})
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/${{ secrets.T }}"]}])
    emit(store, run_id, "workflow_failed")

    notifier.poll(block_ms=10)

    assert sender.calls == []
    (failed,) = notifications(store, run_id)
    assert failed["attempts"] == "0"
    assert failed["error"].startswith("secret T is not set in the environment")


def test_an_expired_runs_stream_is_not_brought_back_by_a_notification(redis_client, prefix, store):
    sender = FakeSender()
    notifier = make_notifier(redis_client, prefix, sender)
    run_id = make_run(store, [{"on": ["failed"], "urls": ["json://h/a"]}])
    emit(store, run_id, "workflow_failed")
    store.r.delete(store.keys.run_events(run_id))

    notifier.poll(block_ms=10)

    assert len(sender.calls) == 1
    assert not store.r.exists(store.keys.run_events(run_id))
    assert [e["type"] for e in notifications(store)] == ["notification_sent"]


# ---------------------------------------------------------------- apprise, for real


def test_apprise_posts_to_a_local_webhook_and_no_log_shows_the_secret(caplog, monkeypatch):
    monkeypatch.setattr(notifysend, "RETRY_DELAYS", (0.0, 0.0))
    caplog.set_level(logging.DEBUG)
    message = Message("wf: failed (run r1)", "The run r1 of workflow wf failed.", "failure")
    env = {"T": SECRET}
    with receiver() as hook:
        ok = deliver(f"{hook.url('hook')}/${{{{ secrets.T }}}}", message, env=env)
        post = hook.next()
    refused = deliver(
        f"json://127.0.0.1:{closed_port()}/x/${{{{ secrets.T }}}}",
        message,
        env=env,
        send=apprise_send,
    )

    assert ok is not None and ok.sent and ok.attempts == 1
    assert post.path == "/hook/tok%2F3n%3FS3CRET"
    assert post.body["title"] == "wf: failed (run r1)"
    assert post.body["message"] == "The run r1 of workflow wf failed."
    assert post.body["type"] == "failure"
    assert refused is not None and not refused.sent and refused.attempts == 3
    assert refused.error and "Connection error" in refused.error
    logged = caplog.text
    assert "urllib3" in logged or "notification to a json:// URL failed" in logged
    assert SECRET not in logged and "tok%2F3n%3FS3CRET" not in logged
    assert SECRET not in refused.error and "tok%2F3n" not in refused.error
