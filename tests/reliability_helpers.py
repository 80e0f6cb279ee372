"""Run the reliability battery (scripts/reliability.py) at CI size and read its figures.

The battery starts its own redis-server on a free port and its own workers, so the
tests need `redis-server` on PATH (skipped locally without it, a failure in CI). It never
touches the Redis the rest of the suite uses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Signatures of the known bugs (see docs/reliability.md, "Bugs found"). A hanging run
# matches one only if every unfinished step looks exactly like it; anything else fails.
HANDON_LOST = (
    "a worker killed between recording a step as succeeded and publishing what follows it "
    "leaves the run hanging until the visibility timeout: finish_step drops the lease-index "
    "entry, so the lease reconciler never restores the still-unacked message"
)
HANDON_LOST_BROKER_DOWN = (
    "a step that finishes while the broker is down records its success, then fails to "
    "publish what follows it (dynamic publish_steps or Celery's chain/chord continuation) "
    "and nothing retries the hand-on, so the run hangs"
)
CANVAS_MESSAGE_ACKED = (
    "canvas steps running when the broker connection drops are terminated by Celery "
    "(worker_cancel_long_running_tasks_on_connection_loss) and their message is acked; the "
    "record stays 'running' and the reconciler cannot re-publish a canvas step, so the run "
    "hangs forever"
)


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server must be on PATH in CI")
        pytest.skip("redis-server is not on PATH")


def battery(tmp_path: Path, *flags: str, timeout: float = 170) -> dict[str, Any]:
    """Run the battery at CI size with ``flags``; returns its JSON figures."""
    require_redis_server()
    out = tmp_path / "reliability.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    proc = subprocess.run(
        [sys.executable, "scripts/reliability.py", "--ci", *flags, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.exists(), f"no figures (exit {proc.returncode}): {proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def is_handon_lost(hanging: dict[str, Any]) -> bool:
    """Nothing running, and every unfinished step's message is nowhere (never published)."""
    steps = hanging["steps"].values()
    return bool(steps) and all(
        s["status"] == "pending" and s["message"] == "nowhere" for s in steps
    )


def is_canvas_message_acked(hanging: dict[str, Any]) -> bool:
    """A canvas run with a step still 'running', no lease, and its message gone."""
    steps = hanging["steps"].values()
    running = [s for s in steps if s["status"] == "running"]
    return (
        hanging["mode"] == "canvas"
        and bool(running)
        and all(s["message"] == "nowhere" and s["lease"] < 0 for s in running)
        and all(s["message"] == "nowhere" for s in steps)
    )
