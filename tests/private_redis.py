"""A redis-server of a test's own (every key in it is the code's), and workers on it.

Used where a test must see or break Redis as a whole: scanning every key a deployment
writes, or restarting Redis under a worker. The suite's shared Redis is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import WorkerProcess

from runbook_celery.core.settings import Settings
from runbook_celery.engine.app import make_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on a fixed port (so it can be stopped and started again there)."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server must be on PATH for this test")
        self.directory = directory
        # persistent: every write is in the AOF before it is answered, so a restart keeps it
        self.persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if persistent
            else ["--appendonly", "no"]
        )
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 20) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", *self.persistence],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:  # readiness: the first PING answered
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


class PrivateWorker(WorkerProcess):
    """A worker on a private Redis: readiness is pinged there, not on the suite's Redis."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        super().__init__(**kwargs)

    def _wait_ready(self, timeout: float = 60) -> None:
        # our app's transport options (the binding separator differs from kombu's default)
        probe = make_app(Settings(redis_url=self.url, broker_url=self.url))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited early: {self.log_path.read_text()[-3000:]}")
                if probe.control.ping(destination=[self.name], timeout=0.5):
                    return
        finally:
            probe.close()
        raise RuntimeError(f"worker not ready: {self.log_path.read_text()[-3000:]}")


def private_env(url: str, queue: str = "runbook") -> dict[str, str]:
    """Worker and CLI settings for a private Redis (broker, backend and store alike)."""
    return {
        "RUNBOOK_REDIS_URL": url,
        "RUNBOOK_BROKER_URL": url,
        "RUNBOOK_PREFIX": "runbook",
        "RUNBOOK_QUEUE": queue,
    }
