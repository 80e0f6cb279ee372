"""`runbook-celery worker --step-user NAME`: the worker stays root, its steps run as NAME.

The deployment the docs recommend for untrusted steps: the worker starts as root with the
Redis URL (and its password) in a file only root can read (``RUNBOOK_REDIS_URL_FILE``),
and runs steps as an unprivileged user (``nobody`` here). A step then cannot read the
file, nor any environment, command line or memory of the worker's processes, nor signal
them; so it has no way to the Redis password, and cannot approve its own run's gate
(Redis refuses it without the password). It still runs normally: logs, outputs, and the
containment of what it starts (its processes run as another user than the worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import ROOT, SESSION, wait_for_event
from own_redis import own_redis
from test_containment_e2e import escaped_pid, escaping_workflow, gone

from runbook_celery.client.run import Run
from runbook_celery.core.settings import Settings, get_settings
from runbook_celery.store import RunStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PASSWORD = "step-user-s3cret"
QUEUE = f"stepuser-{SESSION}"
URL_VARIABLES = ("RUNBOOK_REDIS_URL", "RUNBOOK_BROKER_URL")

SNOOP = """
name: snoop
steps:
  - id: snoop
    queue: {queue}
    run: |
      echo "running as $(id -un)"
      echo "uid=$(id -u)" >> "$RUNBOOK_OUTPUT"
      try() {{ if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }}
      echo "environ=$(try cat /proc/$PPID/environ)" >> "$RUNBOOK_OUTPUT"
      echo "maps=$(try cat /proc/$PPID/maps)" >> "$RUNBOOK_OUTPUT"
      echo "file=$(try cat "$URL_FILE")" >> "$RUNBOOK_OUTPUT"
      echo "signal=$(try kill -0 $PPID)" >> "$RUNBOOK_OUTPUT"
      echo "signal_worker=$(try kill -0 "$WORKER_PID")" >> "$RUNBOOK_OUTPUT"
      # whatever this step can read of every process and of the URL file, for the test
      for p in /proc/[0-9]*; do cat "$p/environ" "$p/cmdline"; done > {dump} 2>/dev/null || :
      cat "$URL_FILE" >> {dump} 2>/dev/null || :
      # Redis without its password: what `runbook-celery approve` from here would meet
      exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT"
      printf 'GET anything\\r\\n' >&3
      read -r reply <&3
      exec 3<&-
      echo "redis=${{reply%$'\\r'}}" >> "$RUNBOOK_OUTPUT"
  - id: deploy
    queue: {queue}
    needs: [snoop]
    approval: {{prompt: "Deploy?"}}
    run: echo deployed
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder anyone may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=f"rbtest-stepuser-{SESSION}-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def deployment(open_dir: Path) -> Iterator[tuple[dict[str, str], RunStore, Settings]]:
    """A password-protected Redis, its URL in a root-only file, and a worker started as
    root with ``--step-user nobody``: (client environment, store, settings)."""
    assert os.geteuid() == 0, "--step-user needs a worker started as root; so does this test"
    with own_redis(password=PASSWORD) as url:
        url_file = open_dir / "redis-url"
        url_file.write_text(url + "\n")
        url_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
        env |= {
            "RUNBOOK_REDIS_URL_FILE": str(url_file),
            "URL_FILE": str(url_file),
            "REDIS_PORT": url.rsplit(":", 1)[1].split("/")[0],
        }
        log = open_dir / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "runbook_celery", "worker", "--step-user", "nobody"),
                    *("-c", "2", "-Q", QUEUE, "-n", f"stepuser-{SESSION}@localhost"),
                    *("--without-gossip", "--without-mingle"),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        env["WORKER_PID"] = str(worker.pid)
        settings = get_settings().with_(redis_url=url, broker_url=url)
        store = RunStore(redis.Redis.from_url(url), settings.prefix, settings.retention)
        try:
            yield env, store, settings
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            text = log.read_text(errors="replace")
            assert PASSWORD not in text


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly ``env`` (conftest's run_cli adds the shared Redis' URL)."""
    return subprocess.run(
        [sys.executable, "-m", "runbook_celery", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def _trigger(definition: Path, env: dict[str, str]) -> str:
    res = _cli("trigger", str(definition), env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[-1]


def test_a_step_run_as_the_step_user_cannot_reach_the_workers_credentials(
    open_dir: Path, deployment
):
    env, store, settings = deployment
    dump = open_dir / "dump"
    dump.touch()
    dump.chmod(0o666)
    definition = open_dir / "snoop.yaml"
    definition.write_text(SNOOP.format(queue=QUEUE, dump=dump))
    definition.chmod(0o644)
    # Given a run whose first step snoops for credentials, then a gate
    run_id = _trigger(definition, env)
    # When the snooping step has run and the run waits at the gate
    wait_for_event(store, run_id, "step_awaiting_approval", "deploy", timeout=120)
    record = store.get_run(run_id)
    snoop = record.steps["snoop"]
    # Then the step ran as nobody, its outputs and its log arrived as usual
    assert snoop.status == "succeeded", record.to_dict()
    assert snoop.outputs == {
        "uid": "65534",
        "environ": "no",
        "maps": "no",
        "file": "no",
        "signal": "no",
        "signal_worker": "no",
        "redis": "-NOAUTH Authentication required.",
    }
    logs = _cli("logs", run_id, "snoop", env=env)
    assert "running as nobody" in logs.stdout, logs.stderr
    # and nothing it could read holds the password (it read its own environment, at least)
    seen = dump.read_bytes()
    assert b"RUNBOOK_RUN_ID=" in seen
    assert PASSWORD.encode() not in seen
    # and the gate is still closed: only an operator with the credentials opens it
    assert store.get_run(run_id).steps["deploy"].status == "awaiting_approval"
    res = _cli("approve", run_id, "deploy", "--by", "operator", env=env)
    assert res.returncode == 0, res.stderr
    final = Run(run_id, settings=settings).wait(timeout=60)
    assert final.status == "succeeded", final.to_dict()


def test_what_a_step_user_step_leaves_behind_dies_when_it_is_cancelled(open_dir: Path, deployment):
    env, _store, _settings = deployment
    # Given a step running as nobody whose child escaped its process group (setsid)
    tmp = open_dir / "escape"
    tmp.mkdir(mode=0o777)
    tmp.chmod(0o777)
    run_id = _trigger(escaping_workflow(tmp, "setsid", QUEUE), env)
    with escaped_pid(tmp / "fifo") as pid:
        assert Path(f"/proc/{pid}").stat().st_uid == 65534
        # When the run is cancelled
        res = _cli("cancel", run_id, env=env)
        assert res.returncode == 0, res.stderr
        # Then the escaped process, another user's, dies too
        assert gone(pid), f"process {pid} of the step user outlived its cancelled step"
