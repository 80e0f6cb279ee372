"""Queue names cannot collide with broker internals or our own keys.

On Redis a queue NAME is the list NAME plus NAME:1 .. NAME:9 (one list per priority), in the
same database as kombu's bookkeeping, Celery's results and every key of ours. `queue:
unacked` once turned kombu's `unacked` hash into a list and killed every worker for good.
Here every key name those libraries and our code use is tried as a queue, with and without
a priority suffix, and must be refused by the model, the worker and RUNBOOK_QUEUE.
"""

from __future__ import annotations

import inspect

import pytest
from celery.events.receiver import EventReceiver
from conftest import run_cli
from kombu.transport.redis import Channel

from runbook_celery.app import app, make_app
from runbook_celery.errors import InvalidDefinition, InvalidSetting
from runbook_celery.keys import Keys
from runbook_celery.loader import load_workflow_text
from runbook_celery.model import Step
from runbook_celery.queuenames import queue_name_problem, queue_names_problem
from runbook_celery.settings import Settings

pytestmark = pytest.mark.timeout(60)

PRIORITY_SEP = app.conf.broker_transport_options["sep"]


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
    assert "runbook:leases" in RESERVED and "runbook:runs" in RESERVED
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


def test_cli_refuses_to_trigger_onto_a_reserved_default_queue(write_workflow):
    # (an unreachable broker: were the queue accepted, nothing could be published anyway)
    path = write_workflow("name: w\nsteps:\n  - id: s\n    run: 'true'\n")
    env = {"RUNBOOK_QUEUE": "unacked", "RUNBOOK_BROKER_URL": "redis://127.0.0.1:1/0"}
    res = run_cli("trigger", str(path), env=env, timeout=30)
    assert res.returncode == 2
    assert "RUNBOOK_QUEUE: 'unacked' is a Redis key" in res.stderr
    assert "Traceback" not in res.stderr
