"""Notifications end to end: real workers, real Redis, apprise posting to a local receiver.

The workers here have a key prefix and queue of their own, and a secret in their
environment (HOOK_TOKEN): every notifier of a consumer group must be able to resolve the
URLs it may be handed, so the session's shared worker must not be one of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import PREFIX, QUEUE, ROOT, WorkerProcess, run_cli, wait_for_event
from notify_helpers import HungService, Receiver, closed_port, receiver, silent_port

from runbook_celery.core.settings import get_settings
from runbook_celery.engine.notify import GROUP
from runbook_celery.store import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

NE_PREFIX = f"{PREFIX}:ne"
NE_QUEUE = f"{QUEUE}-ne"
TOKEN = "Tok3n/with?odd&chars"  # encoded in a URL: Tok3n%2Fwith%3Fodd%26chars
TOKEN_FORMS = (TOKEN, "Tok3n%2Fwith", "odd&chars", "odd%26chars")
REF = "${{ secrets.HOOK_TOKEN }}"
ENV = {
    "RUNBOOK_PREFIX": NE_PREFIX,
    "RUNBOOK_QUEUE": NE_QUEUE,
    "HOOK_TOKEN": TOKEN,
    "RUNBOOK_FLOWER_URL": "http://flower.test:5555",
}


@pytest.fixture(scope="module")
def workers(redis_client) -> Iterator[list[WorkerProcess]]:  # type: ignore[no-untyped-def]
    started = [
        WorkerProcess(f"notify{i}", queues=NE_QUEUE, concurrency=2, env=ENV) for i in range(2)
    ]
    yield started
    for w in started:
        w.stop()
    _forget_task_results(redis_client, NE_PREFIX)


def _forget_task_results(client, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The session cleanup knows our keys by prefix, not our runs' Celery results."""
    for run_id in client.zrange(f"{prefix}:runs", 0, -1):
        for key in client.scan_iter(match=f"celery-task*-{run_id.decode()}.*", count=1000):
            client.delete(key)


@pytest.fixture
def ne_store(redis_client, workers) -> RunStore:  # type: ignore[no-untyped-def]
    return RunStore(redis_client, NE_PREFIX, get_settings().retention)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as r:
        yield r


def trigger(path: Path, env: dict[str, str] | None = None) -> str:
    result = run_cli("trigger", str(path), env={**ENV, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for_events(
    store: RunStore, run_id: str, etype: str, count: int, timeout: float = 60
) -> list[dict[str, str]]:
    """Block on the run's event stream until ``count`` events of ``etype`` are there."""
    found: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    for _eid, event in store.follow_events(run_id, block_ms=500):
        if event.get("type") == etype:
            found.append(event)
            if len(found) == count:
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} of {count} {etype} events in {timeout}s: {found}")
    raise AssertionError("event stream ended")


def run_events(store: RunStore, run_id: str) -> list[dict[str, str]]:
    return [fields for _, fields in store.events(run_id)]


def _output(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    return result.stdout, result.stderr


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


FAILING = """
name: nightly-build
secrets: [HOOK_TOKEN]
notify:
  - on: [failed]
    urls: ["{url}"]
steps:
  - id: fetch
    run: echo fetched
  - id: build
    needs: [fetch]
    run: |
      echo "compiling" >&2
      echo "error: linker failed" >&2
      exit 3
  - id: publish
    needs: [build]
    run: echo never
"""


def test_a_webhook_receives_the_failure_of_a_run(workers, ne_store, hook, write_workflow):
    run_id = trigger(write_workflow(FAILING.format(url=hook.url("builds"))))

    post = hook.next()
    sent = wait_for_event(ne_store, run_id, "notification_sent")

    assert post.path == "/builds"
    assert post.body["type"] == "failure"
    assert post.body["title"] == f"nightly-build: failed (run {run_id})"
    lines = post.body["message"].splitlines()
    assert lines[0] == f"The run {run_id} of workflow nightly-build failed."
    assert "Failed step build: exit code 3, reason exit_code" in lines
    assert lines[lines.index("Failed step build: exit code 3, reason exit_code") + 1 :][:3] == [
        "  stderr (last 2 lines):",
        "    compiling",
        "    error: linker failed",
    ]
    assert lines[-1] == f"Run page: http://flower.test:5555/runs/{run_id}"
    assert sent["on"] == "failed" and sent["service"] == "json" and sent["attempts"] == "1"
    assert sent["target"] == "notify[0].urls[0]"
    assert ne_store.get_run(run_id).status == "failed"
    assert hook.taken() == []  # one run, one failure, one notification


def test_an_unreachable_or_hung_service_delays_and_fails_nothing_in_the_run(
    workers, ne_store, hook, write_workflow
):
    with silent_port() as hung:
        urls = [
            f"json://127.0.0.1:{closed_port()}/refused",
            f"json://127.0.0.1:{hung}/hung?rto=2&cto=2",  # 3 x 2 s unanswered, plus retry delays
            hook.url("ok"),
        ]
        run_id = trigger(
            write_workflow(
                "name: chain\nnotify:\n  - on: [started, succeeded]\n"
                f"    urls: {json.dumps(urls)}\n"
                "steps:\n  - id: a\n    run: echo a\n  - id: b\n    needs: [a]\n    run: echo b\n"
                "  - id: c\n    needs: [b]\n    run: echo c\n"
            )
        )
        ended = wait_for_event(ne_store, run_id, "workflow_succeeded")
        kinds = {hook.next().body["type"], hook.next().body["type"]}
        failures = wait_for_events(ne_store, run_id, "notification_failed", 4)

    record = ne_store.get_run(run_id)
    assert record.status == "succeeded"
    assert [s.status for s in record.steps.values()] == ["succeeded"] * 3
    assert kinds == {"info", "success"}  # the reachable URL got both notifications
    assert {(f["on"], f["target"]) for f in failures} == {
        (on, f"notify[0].urls[{i}]") for on in ("started", "succeeded") for i in (0, 1)
    }
    for failed in failures:
        assert failed["attempts"] == "3" and failed["service"] == "json"
        assert failed["error"].startswith("A Connection error occurred sending JSON"), failed
    # The hung service held the notification of `started` for more than 10 s; the run had
    # ended by then, with nothing of its own after its final event.
    hung_started = next(f for f in failures if f["on"] == "started" and f["target"].endswith("[1]"))
    assert ts(ended["ts"]) < ts(hung_started["ts"])
    assert record.finished_at is not None and ts(record.finished_at) == ts(ended["ts"])
    types = [e["type"] for e in run_events(ne_store, run_id)]
    after_end = types[types.index("workflow_succeeded") + 1 :]
    assert all(t.startswith("notification_") for t in after_end), after_end


def test_two_workers_send_each_notification_exactly_once(workers, ne_store, hook, write_workflow):
    path = write_workflow(FAILING.format(url=hook.url("once")))
    run_ids = [trigger(path) for _ in range(6)]

    for run_id in run_ids:
        wait_for_event(ne_store, run_id, "notification_sent")
    posts = [hook.next() for _ in run_ids]

    titles = sorted(p.body["title"] for p in posts)
    assert titles == sorted(f"nightly-build: failed (run {r})" for r in run_ids)
    for run_id in run_ids:
        sent = [e for e in run_events(ne_store, run_id) if e["type"].startswith("notification_")]
        assert len(sent) == 1, sent
    consumers = ne_store.r.xinfo_consumers(ne_store.keys.global_events, GROUP)
    assert len(consumers) >= 2  # both workers' notifiers compete in the group
    assert hook.taken() == []


def test_an_approval_gate_is_notified_with_how_to_answer_it(
    workers, ne_store, hook, write_workflow
):
    run_id = trigger(
        write_workflow(
            "name: release\nnotify:\n  - on: awaiting_approval\n"
            f"    urls: {hook.url('approvals')}\n"
            "steps:\n  - id: build\n    run: echo built\n"
            "  - id: ship\n    needs: [build]\n    approval: {prompt: 'Ship version 2?'}\n"
            "    run: echo shipped\n"
        )
    )
    post = hook.next()
    assert post.body["type"] == "warning"
    assert post.body["title"] == f"release: step ship awaits approval (run {run_id})"
    assert post.body["message"].splitlines()[:3] == [
        f"Step ship of run {run_id} of workflow release awaits approval: Ship version 2?",
        f"Approve: runbook-celery approve {run_id} ship",
        f"Reject:  runbook-celery reject {run_id} ship",
    ]
    approved = run_cli("approve", run_id, "ship", env=ENV)
    assert approved.returncode == 0, approved.stderr
    wait_for_event(ne_store, run_id, "workflow_succeeded")


def test_a_secret_in_a_url_never_appears_in_events_logs_or_status(
    workers, ne_store, hook, write_workflow
):
    refused = f"json://127.0.0.1:{closed_port()}/x/{REF}"
    run_id = trigger(
        write_workflow(
            "name: secretive\nsecrets: [HOOK_TOKEN]\nnotify:\n  - on: [failed, step_failed]\n"
            "    urls:\n"
            f"      - '{hook.url('s')}/{REF}?-t={REF}'\n"
            f"      - '{refused}'\n"
            'steps:\n  - id: leak\n    run: |\n      echo "token=$HOOK_TOKEN" >&2\n      exit 4\n'
        )
    )
    posts = [hook.next(), hook.next()]  # step_failed and failed
    wait_for_events(ne_store, run_id, "notification_failed", 2)
    sent = wait_for_events(ne_store, run_id, "notification_sent", 2)

    # the secret was used where it belongs: in the URL the service was called at (apprise
    # quotes a path, requests a query, each in its own way)
    assert {p.path for p in posts} == {"/s/Tok3n%2Fwith%3Fodd&chars?t=Tok3n%2Fwith%3Fodd%26chars"}
    assert {e["on"] for e in sent} == {"failed", "step_failed"}
    # and nowhere else
    messages = " ".join(json.dumps(p.body) for p in posts)
    assert "token=***" in messages
    places = {
        "messages": messages,
        "run events": json.dumps(run_events(ne_store, run_id)),
        "global events": json.dumps([f for _, f in ne_store.events(None) if f["run_id"] == run_id]),
        "status --json": run_cli("status", run_id, "--json", env=ENV).stdout,
        "events --json": run_cli("events", "--run", run_id, "--json", env=ENV).stdout,
        "logs": "".join(_output(run_cli("logs", run_id, env=ENV))),
        "run in redis": json.dumps(
            {
                k.decode(): str(ne_store.r.dump(k))
                for k in ne_store.r.scan_iter(match=f"{NE_PREFIX}:run:{run_id}*")
            }
        ),
        "worker logs": "".join(w.log_path.read_text(errors="replace") for w in workers),
    }
    assert "notification_failed" in places["events --json"]
    for where, text in places.items():
        for form in TOKEN_FORMS:
            assert form not in text, f"{where} shows the secret ({form!r})"


def test_a_separate_notifier_sends_when_workers_do_not(redis_client, hook, write_workflow):
    prefix = f"{PREFIX}:ns"
    env = {**ENV, "RUNBOOK_PREFIX": prefix, "RUNBOOK_QUEUE": f"{QUEUE}-ns"}
    quiet = {**env, "RUNBOOK_WORKER_NOTIFIER": "false"}
    worker = WorkerProcess("quiet", queues=env["RUNBOOK_QUEUE"], concurrency=1, env=quiet)
    notifier = subprocess.Popen(
        [sys.executable, "-m", "runbook_celery", "notifier"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    store = RunStore(redis_client, prefix, 3600)
    try:
        banner = notifier.stdout.readline() if notifier.stdout else ""
        assert banner.startswith("notifier "), banner  # it has joined the group
        run_id = trigger(write_workflow(FAILING.format(url=hook.url("apart"))), env=env)
        post = hook.next()
        wait_for_event(store, run_id, "notification_sent")
        consumers = store.r.xinfo_consumers(store.keys.global_events, GROUP)
        assert [c["name"].decode().split(":")[1] for c in consumers] == [str(notifier.pid)]
        assert post.body["title"] == f"nightly-build: failed (run {run_id})"
    finally:
        notifier.send_signal(signal.SIGTERM)
        rest, _ = notifier.communicate(timeout=15)
        code = notifier.returncode
        worker.stop()
        _forget_task_results(redis_client, prefix)
    assert code == 0, rest


def test_a_stopping_worker_does_not_wait_for_a_notification_stuck_on_a_hung_service(
    redis_client, write_workflow
):
    prefix = f"{PREFIX}:nh"
    env = {**ENV, "RUNBOOK_PREFIX": prefix, "RUNBOOK_QUEUE": f"{QUEUE}-nh"}
    hung = HungService()
    worker = WorkerProcess("hang", queues=env["RUNBOOK_QUEUE"], concurrency=1, env=env)
    try:
        url = f"json://127.0.0.1:{hung.port}/x?rto=120"  # a read would wait two minutes
        trigger(write_workflow(FAILING.format(url=url)), env=env)
        assert hung.called.wait(60), "the notification never reached the hung service"
        started = time.monotonic()
        code = worker.stop(signal.SIGTERM, timeout=60)
        took = time.monotonic() - started
    finally:
        worker.stop(signal.SIGKILL)
        hung.close()
        _forget_task_results(redis_client, prefix)
    assert code == 0 and took < 20, f"the worker took {took:.1f}s to stop (exit code {code})"


def test_the_notifier_command_exits_3_when_redis_is_unreachable():
    result = run_cli("notifier", env={"RUNBOOK_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"})
    assert result.returncode == 3
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
