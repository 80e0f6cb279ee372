"""Queue names cannot collide with broker internals or our own keys.

On Redis a queue NAME is the list NAME plus NAME:1 .. NAME:9 (one list per priority), in the
same database as kombu's bookkeeping, Celery's results and every key of ours. `queue:
unacked` once turned kombu's `unacked` hash into a list and killed every worker for good.
Here every key name those libraries and our code use is tried as a queue, with and without
a priority suffix, and must be refused by the model, the worker and RUNBOOK_QUEUE.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.events.receiver import EventReceiver
from conftest import run_cli, wait_for_event
from kombu.transport.redis import Channel
from private_redis import PrivateWorker, RedisServer, private_env

from runbook_celery.core.errors import InvalidDefinition, InvalidSetting
from runbook_celery.core.settings import Settings
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.definition.queuenames import queue_name_problem, queue_names_problem
from runbook_celery.definition.stepmodel import Step
from runbook_celery.engine.app import app, make_app
from runbook_celery.store import RunStore
from runbook_celery.store.keys import Keys

pytestmark = pytest.mark.timeout(60)

PRIORITY_SEP = app.conf.broker_transport_options["sep"]
DIAMOND = Path(__file__).resolve().parent.parent / "definitions" / "diamond.yaml"


def _kombu_keys() -> list[str]:
    """The keys kombu's Redis transport writes, from its Channel class."""
    return [
        Channel.unacked_key,
        Channel.unacked_index_key,
        Channel.unacked_mutex_key,
        Channel.keyprefix_queue % "runbook",
        Channel.keyprefix_binding_deadlines,
        Channel.keyprefix_binding_permanent % "runbook",
    ]


def _celery_keys() -> list[str]:
    """Result-backend keys (tasks, groups, chord counters) and the control/event queues."""
    backend = app.backend
    keys = [backend.get_key_for_task("t-1"), backend.get_key_for_chord("g-1")]
    keys += [
        backend.get_key_for_group("g-1", suffix) for suffix in ("", ".j", ".t", ".s", ".d", ".c")
    ]
    mailbox = app.control.mailbox
    names = [
        mailbox.exchange.name,
        mailbox.reply_exchange.name,
        mailbox.get_reply_queue().name,
        mailbox.get_queue("worker@host").name,
        EventReceiver(app.connection_for_read(), app=app).queue.name,
        "celeryev",
    ]
    return [k.decode() if isinstance(k, bytes) else k for k in keys] + names


def _our_keys(prefix: str) -> list[str]:
    """Every key name ``Keys`` can produce (each property, each method with sample ids)."""
    keys = Keys(prefix)
    names: list[str] = []
    for name, member in inspect.getmembers(type(keys)):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            names.append(getattr(keys, name))
        elif inspect.isfunction(member):
            arity = len(inspect.signature(member).parameters) - 1
            args = ["0123456789abcdef0123456789abcdef", "build[3]"][:arity]
            if name == "run_keys":
                args = [args[0], ["build"]]
            out = getattr(keys, name)(*args)
            names += out if isinstance(out, list) else [out]
    return names


PREFIXES = ["runbook", "rb", "unacked", "gpu"]
RESERVED = sorted(
    {
        *_kombu_keys(),
        *_celery_keys(),
        *(k for prefix in PREFIXES for k in _our_keys(prefix)),
        f"{PREFIXES[0]}:cgroup:deploy-prod",  # concurrency groups (gates.py)
        f"{PREFIXES[0]}:cgroup:deploy-prod:queue",
    }
)


def test_the_catalogue_covers_every_family_of_keys():
    assert "unacked" in RESERVED and "_kombu.binding.runbook" in RESERVED
    assert any(k.startswith("celery-task-meta-") for k in RESERVED)
    assert any(k.endswith(".reply.celery.pidbox") for k in RESERVED)
    assert any(k.startswith("celeryev.") for k in RESERVED)
    assert "runbook:deadletters" in RESERVED and "runbook:leases" in RESERVED
    assert len(RESERVED) > 40


@pytest.mark.parametrize("key", RESERVED)
def test_no_broker_or_runbook_key_can_be_a_queue(key: str):
    # the key itself, and the key seen as priority list N of some queue
    for name in [key, *(f"{key}{PRIORITY_SEP}{n}" for n in range(1, 10))]:
        assert queue_name_problem(name), name
        with pytest.raises(ValueError, match="queue"):
            Step(id="s", run="true", queue=name)


@pytest.mark.parametrize("key", RESERVED)
def test_no_allowed_queue_has_a_list_that_is_such_a_key(key: str):
    # a queue is refused if any of its lists (NAME, NAME:1..9) would be this key
    base, sep, suffix = key.rpartition(PRIORITY_SEP)
    candidates = [key] + ([base] if sep and suffix.isdigit() else [])
    for queue in candidates:
        assert queue_name_problem(queue), queue


@pytest.mark.parametrize("name", ["x:3", "gpu:9", "runbook:1", "a:b"])
def test_a_name_with_the_priority_separator_is_refused(name: str):
    # x:3 is priority list 3 of queue x; and kombu cuts a popped key at its last ':' to find
    # the queue, so a top-priority message on `a:b` went to `a`: requeued forever
    assert "':'" in (queue_name_problem(name) or "")
    with pytest.raises(ValueError, match="separates a queue from its priority lists"):
        Step(id="s", run="true", queue=name)


@pytest.mark.parametrize("name", ["gpu", "runbook", "celery", "rbtest-0a1b", "eu-west.build_2"])
def test_ordinary_names_are_accepted(name: str):
    assert queue_name_problem(name) is None
    assert Step(id="s", run="true", queue=name).queue == name


def test_a_reserved_queue_is_a_definition_error_with_file_and_line():
    text = "name: w\nsteps:\n  - id: s\n    run: 'true'\n    priority: 9\n    queue: unacked\n"
    with pytest.raises(InvalidDefinition) as info:
        load_workflow_text(text, file="w.yaml")
    (problem,) = info.value.problems
    assert problem.render().startswith("w.yaml:6: steps[0].queue: 'unacked' is a Redis key")
    assert "choose another queue name" in problem.message


def test_a_hostile_queue_name_is_not_echoed_in_full():
    problem = queue_name_problem("q" * 5000) or ""
    assert len(problem) < 300


def test_worker_queue_lists_are_checked_name_by_name():
    assert queue_names_problem("gpu,runbook") is None
    assert "unacked" in (queue_names_problem("gpu, unacked") or "")
    assert queue_names_problem("gpu,,cpu")  # an empty name is no queue


def test_runbook_queue_setting_is_checked_when_the_app_is_made():
    with pytest.raises(InvalidSetting, match="RUNBOOK_QUEUE: 'unacked_index'"):
        make_app(Settings(default_queue="unacked_index"))


def test_a_worker_refuses_to_consume_a_broker_key_without_a_traceback():
    # (a worker would clobber the key with its first message)
    res = run_cli("worker", "-Q", "gpu,unacked", "--without-mingle", timeout=60)
    assert res.returncode == 2
    assert "refusing to consume queue 'unacked': 'unacked' is a Redis key" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_refuses_to_trigger_onto_a_reserved_default_queue(write_workflow):
    # (an unreachable broker: were the queue accepted, nothing could be published anyway)
    path = write_workflow("name: w\nsteps:\n  - id: s\n    run: 'true'\n")
    env = {"RUNBOOK_QUEUE": "unacked", "RUNBOOK_BROKER_URL": "redis://127.0.0.1:1/0"}
    res = run_cli("trigger", str(path), env=env, timeout=30)
    assert res.returncode == 2
    assert "RUNBOOK_QUEUE: 'unacked' is a Redis key" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- every key a deployment writes


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own, so every key in it was written by the code under test."""
    server = RedisServer(tmp_path)
    try:
        yield server.url
    finally:
        server.stop()


EVERYTHING = """\
name: everything
concurrency: {group: "deploy-${{ params.env }}", limit: 1}
max_active_steps: 2
params: {env: prod}
steps:
  - id: build
    priority: 9
    run: echo "items=[1,2]" >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [build]
    for_each: ${{ steps.build.outputs.items }}
    queue: gpu
    run: echo "${{ item }}"
  - id: grid
    needs: [build]
    matrix: {py: ["3.11", "3.12"]}
    priority: 1
    run: echo "${{ matrix.py }}"
  - id: deploy
    needs: [each, grid]
    approval: {prompt: "Ship?"}
    run: 'true'
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_key_a_real_deployment_writes_can_be_a_queue(private_redis: str, write_workflow):
    # Given a worker and runs using every feature that writes keys, on a Redis of our own
    url = private_redis
    env = private_env(url)
    queues = ["runbook", "gpu"]
    worker = PrivateWorker(url, name="keys", queues=",".join(queues), env=env)
    client = redis.Redis.from_url(url)
    try:
        diamond = run_cli("trigger", str(DIAMOND), "--wait", env=env, timeout=90)
        assert diamond.returncode == 0, diamond.stderr
        started = run_cli("trigger", str(write_workflow(EVERYTHING)), env=env, timeout=60)
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip()
        store = RunStore(client, "runbook", 3600)
        wait_for_event(store, run_id, "step_awaiting_approval", "deploy", timeout=90)
        keys = {k.decode() for k in client.scan_iter(count=1000)}  # while a run is active
        assert run_cli("approve", run_id, "deploy", env=env).returncode == 0
        wait_for_event(store, run_id, "workflow_succeeded", timeout=90)
        client.lpush("runbook", b"poison")  # and a dead letter
        assert run_cli("trigger", str(DIAMOND), "--wait", env=env, timeout=90).returncode == 0
    finally:
        worker.stop()
    keys |= {k.decode() for k in client.scan_iter(count=1000)}  # and after every run ended
    client.close()
    # Then every key except the queues' own lists is refused as a queue name
    lists = {f"{q}{PRIORITY_SEP}{n}" if n else q for q in queues for n in range(10)}
    assert {"runbook:runs", "runbook:deadletters", "_kombu.binding.runbook"} <= keys
    assert any(k.startswith("celery-task-meta-") for k in keys)
    assert any(k.startswith("runbook:cgroup:") for k in keys)
    for key in sorted(keys - lists):
        assert queue_name_problem(key), key
        base, sep, suffix = key.rpartition(PRIORITY_SEP)
        if sep and suffix.isdigit():  # a priority list of a queue named `base`
            assert queue_name_problem(base), key
