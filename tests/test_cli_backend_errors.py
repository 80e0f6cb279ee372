"""Every command exits 3 with one clean line when Redis is unreachable or full; no traceback.

Unreachable: a closed port. Full: a redis-server of our own with ``noeviction`` and its
``maxmemory`` reached, holding runs in every state a control command acts on (set up by a
real worker before the server fills up). Reads still work on a full Redis; every write is
refused, and a refused decision leaves the run as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import PREFIX, QUEUE, ROOT, SESSION, run_cli, wait_for_event
from kombu.exceptions import OperationalError
from own_redis import closed_port_url, fill, own_redis

from runbook_celery.store import RunStore
from runbook_celery.store.keys import Keys
from runbook_celery.store.redisconn import describe_backend_error

DIAMOND = str(ROOT / "definitions" / "diamond.yaml")

CONTROL = [
    ("cancel", "RUN"),
    ("pause", "RUN"),
    ("resume", "RUN"),
    ("approve", "RUN", "deploy"),
    ("reject", "RUN", "deploy"),
    ("retry", "RUN", "migrate"),
    ("skip", "RUN", "migrate"),
    ("abort", "RUN"),
]
OBSERVE = [
    ("status", "RUN"),
    ("logs", "RUN"),
    ("events",),
    ("events", "--run", "RUN"),
    ("runs",),
    ("watch", "RUN"),
    ("rerun", "RUN"),
    ("graph", "RUN"),
    ("trigger", DIAMOND),
]


def assert_one_clean_error(res: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert res.returncode == 3, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", CONTROL + OBSERVE, ids=lambda a: " ".join(a[:1] + a[2:]))
def test_every_command_exits_3_when_redis_is_unreachable(args):
    url = closed_port_url()
    argv = [a.replace("RUN", "run-1") if a == "RUN" else a for a in args]
    res = run_cli(*argv, env={"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url})
    assert_one_clean_error(res, "Connection refused")


# ---------------------------------------------------------------- a full Redis

APPROVAL = """
name: gated
steps:
  - id: deploy
    approval: {prompt: "Ship it?"}
    run: "true"
"""
DECISION = """
name: decided
steps:
  - id: migrate
    on_failure: pause
    run: "exit 3"
"""
QUICK = """
name: quick
steps:
  - id: hello
    run: echo hello
"""


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A private Redis with runs in every state, then full; yields its URL and the run ids."""
    with own_redis("--maxmemory-policy", "noeviction") as url:
        env = {"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url}
        store = RunStore(redis.Redis.from_url(url), PREFIX, 3600)
        files = {}
        for name, text in (("gated", APPROVAL), ("decided", DECISION), ("quick", QUICK)):
            files[name] = tmp_path / f"{name}.yaml"
            files[name].write_text(text)
        worker = _start_worker(env, tmp_path / "worker.log")
        try:
            runs = _runs_in_every_state(files, env, store)
        finally:
            _stop(worker)
        client = redis.Redis.from_url(url)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 256 * 1024)
        fill(url)
        yield url, runs


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "celery", "-A", "runbook_celery", "worker", "-Q", QUEUE]
    cmd += ["-c", "2", "-n", f"full-{SESSION}@localhost", "--without-gossip", "--without-mingle"]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def _trigger(path: Path, env: dict[str, str]) -> str:
    res = run_cli("trigger", str(path), env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _runs_in_every_state(
    files: dict[str, Path], env: dict[str, str], store: RunStore
) -> dict[str, str]:
    runs = {
        "approval": _trigger(files["gated"], env),  # approve, reject
        "active": _trigger(files["gated"], env),  # pause, cancel
        "paused": _trigger(files["gated"], env),  # resume
        "decision": _trigger(files["decided"], env),  # retry, skip, abort
        "finished": _trigger(files["quick"], env),  # rerun and the read-only commands
    }
    for key in ("approval", "active", "paused"):
        wait_for_event(store, runs[key], "step_awaiting_approval", "deploy", timeout=60)
    wait_for_event(store, runs["decision"], "step_awaiting_decision", "migrate", timeout=60)
    wait_for_event(store, runs["finished"], "workflow_succeeded", timeout=60)
    assert run_cli("pause", runs["paused"], env=env).returncode == 0
    wait_for_event(store, runs["paused"], "workflow_paused", timeout=30)
    return runs


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_on_a_full_redis_writes_exit_3_reads_work_and_nothing_changes(full_redis):
    url, runs = full_redis
    env = {"RUNBOOK_REDIS_URL": url, "RUNBOOK_BROKER_URL": url}
    client = redis.Redis.from_url(url)
    store = RunStore(client, PREFIX, 3600)
    before = {key: (store.get_run(r).to_dict(), _events(client, r)) for key, r in runs.items()}
    refused = [
        ("cancel", runs["active"]),
        ("pause", runs["active"]),
        ("resume", runs["paused"]),
        ("approve", runs["approval"], "deploy"),
        ("reject", runs["approval"], "deploy"),
        ("retry", runs["decision"], "migrate"),
        ("skip", runs["decision"], "migrate"),
        ("abort", runs["decision"]),
        ("rerun", runs["finished"]),
        ("trigger", DIAMOND),
    ]
    for args in refused:
        res = run_cli(*args, env=env)
        assert_one_clean_error(res, "maxmemory")
        assert res.stdout == "", args
    # every refused decision left its run exactly as it was
    after = {key: (store.get_run(r).to_dict(), _events(client, r)) for key, r in runs.items()}
    assert after == before
    finished = runs["finished"]
    for args in [
        ("status", finished),
        ("logs", finished),
        ("events", "--run", finished),
        ("runs",),
        ("watch", finished),
        ("graph", finished),
    ]:
        res = run_cli(*args, env=env)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr


def _events(client: redis.Redis, run_id: str) -> int:
    return int(client.xlen(Keys(PREFIX).run_events(run_id)))


@pytest.mark.parametrize(
    ("exc", "fragment"),
    [
        (redis.ConnectionError("Error 111 connecting to h:1."), "Redis is unreachable"),
        (redis.TimeoutError("Timeout reading from h:6379"), "Redis is unreachable"),
        (redis.AuthenticationError("invalid username-password pair"), "refused the credentials"),
        (redis.ResponseError("WRONGPASS invalid username-password pair"), "credentials"),
        (redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "full"),
        (
            redis.ResponseError(
                "Error running script: OOM command not allowed when used memory > 'maxmemory'."
            ),
            "full",
        ),
        (redis.ReadOnlyError("You can't write against a read only replica."), "primary"),
        (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"), "disk"),
        (OperationalError("[Errno 111] Connection refused"), "the broker is unreachable"),
        (redis.ResponseError("redis://:s3cret@h failed"), "Redis failed: redis://:***@h"),
    ],
)
def test_each_backend_failure_is_described_so_the_operator_can_act(exc, fragment):
    text = describe_backend_error(exc)
    assert fragment in text and "s3cret" not in text
