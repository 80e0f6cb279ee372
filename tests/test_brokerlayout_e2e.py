"""kombu's ``global_keyprefix`` works end to end: runs, recovery of a killed worker, poison.

Workers and the client run our app with the prefix set (tests/prefixed_app.py): every
broker key, the queue's lists and kombu's unacknowledged hash, starts with it. A worker is
SIGKILLed while its step runs, leaving the step's message unacknowledged under the prefix;
the next worker's reconciler finds it there (engine/brokerlayout.py), puts it back, and the
run succeeds. An item kombu cannot parse in a prefixed list is dead-lettered under its
queue's name, and the worker goes on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from conftest import ROOT, SESSION, wait_for_event

from runbook_celery.client.api import Run
from runbook_celery.engine.brokerlayout import BrokerLayout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEYPREFIX = f"rbtest-gkp-{SESSION}:"
QUEUE = f"gkp-{SESSION}"
ENV = {
    **os.environ,
    "RUNBOOK_TEST_KEYPREFIX": KEYPREFIX,
    "RUNBOOK_QUEUE": QUEUE,
    "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
}
LAYOUT = BrokerLayout.from_options({"sep": ":", "global_keyprefix": KEYPREFIX})


class _Worker:
    """``celery -A prefixed_app worker`` on our queue, in its own process group."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.log_path = tmp / f"{name}.log"
        cmd = [sys.executable, "-m", "celery", "-A", "prefixed_app", "worker", "-Q", QUEUE]
        cmd += ["-c", "1", "-n", f"{name}-{SESSION}@localhost", "--loglevel=INFO"]
        cmd += ["--without-gossip", "--without-mingle"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
            )
        self.wait_for_log(" ready.")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        """Until the worker logs ``text`` (the control queue is prefixed too: no ping)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=60)


def _submit(workflow: Path) -> str:
    code = "import sys, prefixed_app, runbook_celery as rc; print(rc.submit(sys.argv[1]).id)"
    res = subprocess.run(
        [sys.executable, "-c", code, str(workflow)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.fixture
def prefixed(redis_client: redis.Redis):  # type: ignore[no-untyped-def]
    yield
    for key in redis_client.scan_iter(match=f"{KEYPREFIX}*", count=1000):
        redis_client.delete(key)


def test_a_step_of_a_killed_worker_comes_back_from_the_prefixed_unacked_hash(
    prefixed, redis_client, store, write_workflow, tmp_path
):
    wf = write_workflow(f"""
name: prefixed
steps:
  - id: a
    queue: {QUEUE}
    run: |
      if [ "$RUNBOOK_STEP_ATTEMPT" = 1 ]; then sleep 300 & wait; fi
      echo "attempt=$RUNBOOK_STEP_ATTEMPT" >> "$RUNBOOK_OUTPUT"
  - id: b
    needs: [a]
    queue: {QUEUE}
    run: echo "then=1" >> "$RUNBOOK_OUTPUT"
""")
    first = _Worker("gkp-first", tmp_path)
    try:
        run_id = _submit(wf)
        wait_for_event(store, run_id, "step_started", "a")
        # the message is unacknowledged where kombu keeps it under the prefix, nowhere else
        held = [v for v in redis_client.hvals(LAYOUT.unacked) if f"{run_id}.a".encode() in v]
        assert len(held) == 1
        assert not any(f"{run_id}.a".encode() in v for v in redis_client.hvals("unacked"))
    finally:
        first.kill()
    second = _Worker("gkp-second", tmp_path)
    try:
        final = Run(run_id).wait(timeout=90)
        second.wait_for_log("put step a of run")
        # poison in a prefixed priority list: dead-lettered under the queue's name
        redis_client.lpush(LAYOUT.queue_key(QUEUE, 3), b"not json")
        second.wait_for_log(f"dead letter: message from queue {QUEUE} refused")
        assert second.proc.poll() is None
    finally:
        second.kill(signal.SIGTERM)
    assert final.status == "succeeded", final.to_dict()
    assert final.steps["a"].outputs == {"attempt": "2"}
    assert final.steps["b"].outputs == {"then": "1"}
    assert redis_client.hlen(LAYOUT.unacked) == 0
