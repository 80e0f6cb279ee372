"""Clients following a run ride out a Redis restart: they reconnect, resume the event
stream from the last id, say so on stderr, and give up only after
RUNBOOK_CLIENT_RECONNECT_SECONDS.

A private redis-server (AOF, fsync always, so a restart keeps the run) is stopped and
started again while the client waits; no worker runs, so the run stays open until the
test cancels it after the restart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from private_redis import RedisServer, private_env

from runbook_celery.client.api import submit
from runbook_celery.client.run import Run
from runbook_celery.core.errors import BackendUnavailable, InvalidSetting, WaitTimeout
from runbook_celery.core.settings import Settings
from runbook_celery.engine import dispatch

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = "name: reconnect\nsteps:\n  - id: only\n    run: echo hi\n"


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = RedisServer(tmp_path, persistent=True)
    yield srv
    srv.stop()


def _open_run(server: RedisServer, tmp_path: Path, reconnect_seconds: float = 60) -> Run:
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    settings = Settings(
        redis_url=server.url,
        broker_url=server.url,
        client_reconnect_seconds=reconnect_seconds,
    )
    return submit(wf, settings=settings)


class Notes:
    """What a client said about its connection, with an event per kind of line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lost = threading.Event()
        self.back = threading.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("lost Redis"):
            self.lost.set()
        if line.startswith("reconnected to Redis"):
            self.back.set()


@pytest.mark.timeout(60)
def test_run_wait_rides_out_a_redis_restart(server: RedisServer, tmp_path: Path) -> None:
    run = _open_run(server, tmp_path)
    notes = Notes()
    outcome: dict[str, object] = {}

    def wait() -> None:
        try:
            outcome["record"] = run.wait(timeout=50, on_reconnect=notes)
        except Exception as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    server.stop()
    assert notes.lost.wait(20), notes.lines
    server.start()
    assert notes.back.wait(20), notes.lines
    run.cancel()
    waiter.join(30)
    assert "error" not in outcome, outcome
    assert outcome["record"].status == "cancelled"  # type: ignore[attr-defined]
    assert "RUNBOOK_CLIENT_RECONNECT_SECONDS" in notes.lines[0]


@pytest.mark.timeout(60)
def test_run_wait_gives_up_after_the_reconnect_time(server: RedisServer, tmp_path: Path) -> None:
    run = _open_run(server, tmp_path, reconnect_seconds=2)
    notes = Notes()
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="could not reconnect within 2 s"):
        run.wait(on_reconnect=notes)
    assert 2 <= time.monotonic() - t0 < 15
    assert notes.lost.is_set() and not notes.back.is_set()


@pytest.mark.timeout(60)
def test_a_wait_timeout_also_ends_reconnecting(server: RedisServer, tmp_path: Path) -> None:
    run = _open_run(server, tmp_path, reconnect_seconds=60)
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout):
        run.wait(timeout=3, on_reconnect=Notes())
    assert time.monotonic() - t0 < 15  # not the 60 s of reconnecting


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["watch", "{run}"], 1),  # the run ended cancelled: exit 1
        (["logs", "{run}", "--follow"], 1),
        (["events", "--run", "{run}", "--follow"], 0),  # events ends 0 after the last one
    ],
    ids=["watch", "logs-follow", "events-follow"],
)
def test_cli_followers_ride_out_a_redis_restart(
    server: RedisServer, tmp_path: Path, command: list[str], code: int
) -> None:
    run = _open_run(server, tmp_path)
    env = {**os.environ, **private_env(server.url), "RUNBOOK_CLIENT_RECONNECT_SECONDS": "60"}
    argv = [sys.executable, "-m", "runbook_celery", *(a.format(run=run.id) for a in command)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    notes = Notes()
    reader = threading.Thread(target=lambda: [notes(ln.rstrip()) for ln in proc.stderr or []])
    reader.start()
    try:
        # a command that cannot reach Redis at its start exits 3 at once: wait until this
        # one follows (its blocking XREAD is in Redis's client list)
        probe = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 30
        while not any(c.get("cmd") == "xread" for c in probe.client_list()):
            assert proc.poll() is None and time.monotonic() < deadline, notes.lines
        probe.close()
        server.stop()
        assert notes.lost.wait(30), notes.lines
        server.start()
        assert notes.back.wait(30), notes.lines
        run.cancel()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
    assert proc.returncode == code, (out, notes.lines)
    assert any("cancel" in line for line in out.splitlines()) or command[0] == "logs", out


def test_reconnect_seconds_is_validated() -> None:
    assert Settings.from_env({}).client_reconnect_seconds == 60
    assert (
        Settings.from_env({"RUNBOOK_CLIENT_RECONNECT_SECONDS": "2.5"}).client_reconnect_seconds
        == 2.5
    )
    with pytest.raises(InvalidSetting, match="RUNBOOK_CLIENT_RECONNECT_SECONDS"):
        Settings.from_env({"RUNBOOK_CLIENT_RECONNECT_SECONDS": "soon"})


# ------------------------------------------------------------------ submit during a blip


def _lose_redis_while_publishing(server: RedisServer, back_after: float | None):  # type: ignore[no-untyped-def]
    """A publish_run that stops Redis (restarting it ``back_after`` s later) and fails."""
    restarts: list[threading.Timer] = []

    def publish(*_args: object, **_kwargs: object) -> None:
        server.stop()
        if back_after is not None:
            restarts.append(threading.Timer(back_after, server.start))
            restarts[-1].start()
        raise redis.ConnectionError("Redis went away while the run was published")

    return publish, restarts


def _run_keys(server: RedisServer) -> list[bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return list(client.scan_iter("runbook:run:*"))
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_a_run_that_could_not_be_started_is_removed_once_redis_is_back(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Redis goes away after the run was recorded, while it is being published
    publish, restarts = _lose_redis_while_publishing(server, back_after=1.0)
    monkeypatch.setattr(dispatch, "publish_run", publish)
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    settings = Settings(redis_url=server.url, broker_url=server.url, client_reconnect_seconds=30)
    # When submit fails
    with pytest.raises(BackendUnavailable) as failed:
        submit(wf, settings=settings)
    restarts[0].join(30)
    # Then nothing of the run is left to start later (the caller was told it did not start)
    assert "may still start" not in str(failed.value)
    assert _run_keys(server) == []


@pytest.mark.timeout(60)
def test_a_run_that_could_not_be_removed_is_named_in_the_error(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish, _ = _lose_redis_while_publishing(server, back_after=None)
    monkeypatch.setattr(dispatch, "publish_run", publish)
    wf = tmp_path / "wf.yaml"
    wf.write_text(WORKFLOW)
    settings = Settings(redis_url=server.url, broker_url=server.url, client_reconnect_seconds=1)
    with pytest.raises(BackendUnavailable, match="may still start") as failed:
        submit(wf, settings=settings)
    server.start()
    (key,) = [k for k in _run_keys(server) if k.count(b":") == 2]
    run_id = key.decode().rsplit(":", 1)[1]
    assert f"runbook-celery status {run_id}" in str(failed.value)
