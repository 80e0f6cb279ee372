"""A private redis-server on a free port, for tests that need a Redis in a special state.

Full (``--maxmemory``), password-protected (``--requirepass``) or about to be stopped: such
a server must never be the shared one on 6379 that every other test uses.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port_url(db: int = 0) -> str:
    """A Redis URL nothing listens on (the port was free a moment ago)."""
    return f"redis://127.0.0.1:{free_port()}/{db}"


@contextmanager
def own_redis(*args: str, password: str | None = None, timeout: float = 20) -> Iterator[str]:
    """Start ``redis-server`` with ``args``; yield its URL; stop it afterwards.

    A missing redis-server is a failure, not a skip: CI installs it (``.ci/run``).
    """
    binary = shutil.which("redis-server")
    assert binary, "redis-server must be on PATH (.ci/run installs it)"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rbtest-redis-")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    cmd += ["--appendonly", "no", *args]
    if password:
        cmd += ["--requirepass", password]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.02)  # waiting for a process to listen: there is no event to wait on
        client.close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def fill(url: str) -> None:
    """Write until a ``noeviction`` Redis refuses writes, and keep it that way.

    Once the filling client goes away the memory of its buffers is freed, which would let
    small writes in again; so the limit is then pinned below the memory in use.
    """
    client = redis.Redis.from_url(url)
    chunk = b"x" * 64 * 1024
    try:
        for i in range(100_000):
            client.set(f"filler:{i}", chunk)
        raise AssertionError("Redis never refused a write; is maxmemory set?")
    except redis.OutOfMemoryError:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", max(used - 256 * 1024, 1024 * 1024))
        try:
            client.set("filler:probe", b"x")
            raise AssertionError("Redis still takes small writes")
        except redis.OutOfMemoryError:
            pass
    finally:
        client.close()
