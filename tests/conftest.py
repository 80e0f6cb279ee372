"""Shared fixtures: a private key prefix and queue on real Redis, and a real Celery worker.

Settings are read from the environment once, so this file sets ``RUNBOOK_*`` before any
runbook_celery module is imported. Each test session uses its own key prefix and queue
and deletes only what it wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION = uuid.uuid4().hex[:10]
TEST_REDIS_URL = os.environ.get("RUNBOOK_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = f"rbtest-{SESSION}"
QUEUE = f"rbtest-{SESSION}"

os.environ["RUNBOOK_REDIS_URL"] = TEST_REDIS_URL
os.environ["RUNBOOK_BROKER_URL"] = os.environ.get("RUNBOOK_TEST_BROKER_URL", TEST_REDIS_URL)
os.environ["RUNBOOK_PREFIX"] = PREFIX
os.environ["RUNBOOK_QUEUE"] = QUEUE
os.environ.setdefault("RUNBOOK_KILL_GRACE", "2")
os.environ.setdefault("RUNBOOK_LEASE_SECONDS", "6")

ROOT = Path(__file__).resolve().parent.parent
WORKER_CONCURRENCY = 6


def _redis_or_skip():  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {TEST_REDIS_URL} must answer in CI: {exc}")
        pytest.skip(f"no Redis at {TEST_REDIS_URL}: {exc}")
    return client


@pytest.fixture(scope="session")
def redis_client():  # type: ignore[no-untyped-def]
    client = _redis_or_skip()
    yield client
    _cleanup(client)


def _cleanup(client) -> None:  # type: ignore[no-untyped-def]
    """Delete what this session wrote: our prefix, our queue, our runs' Celery results."""
    run_ids = [r.decode() for r in client.zrange(f"{PREFIX}:runs", 0, -1)]
    for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
        client.delete(key)
    for run_id in run_ids:
        for key in client.scan_iter(match=f"celery-task*-{run_id}.*", count=1000):
            client.delete(key)
    for key in client.scan_iter(match=f"*{QUEUE}*", count=1000):
        client.delete(key)


class WorkerProcess:
    """A real `celery worker` subprocess for our app, on our private queue."""

    def __init__(
        self,
        name: str,
        queues: str = QUEUE,
        concurrency: int = WORKER_CONCURRENCY,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = f"{name}-{SESSION}@localhost"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{self.name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "runbook_celery",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-n",
            self.name,
            "--loglevel=INFO",
            "-E",
            "--without-gossip",
            "--without-mingle",
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        from runbook_celery.engine.app import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early: {self.log_path.read_text()[-3000:]}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise RuntimeError(f"worker not ready in {timeout}s: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = 15, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def worker(redis_client) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    w = WorkerProcess("main")
    yield w
    w.stop()


@pytest.fixture(params=["redis", "memory"])
def store_client(request):  # type: ignore[no-untyped-def]
    """The server a store contract test runs on: real Redis (this session's DB; the test
    keeps its keys under the session prefix) or the store's in-memory double
    (``runbook_celery.store.memory``: the same Lua scripts on fakeredis), a new, empty
    server per test. A fixture built on it runs every test that uses it on both."""
    if request.param == "memory":
        from runbook_celery.store.memory import memory_redis

        return memory_redis()
    return request.getfixturevalue("redis_client")


@pytest.fixture
def store(redis_client):  # type: ignore[no-untyped-def]
    from runbook_celery.core.settings import get_settings
    from runbook_celery.store import RunStore

    s = get_settings()
    return RunStore(redis_client, s.prefix, s.retention)


@pytest.fixture
def write_workflow(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write YAML text to a file in a fresh folder and return its path."""

    def _write(text: str, name: str = "wf.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


def wait_for_event(
    store,
    run_id: str,
    etype: str,
    step: str | None = None,  # type: ignore[no-untyped-def]
    timeout: float = 30,
) -> dict[str, str]:
    """Block on the run's event stream until an event matches (no sleeping)."""
    deadline = time.monotonic() + timeout
    for _eid, event in store.follow_events(run_id, block_ms=500):
        if event and event.get("type") == etype and (step is None or event.get("step") == step):
            return event
        if time.monotonic() > deadline:
            raise AssertionError(f"no {etype} {step or ''} event for run {run_id} in {timeout}s")
    raise AssertionError("event stream ended")


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    """Run the real console script and capture exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "runbook_celery", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
