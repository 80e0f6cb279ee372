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
    # the script's own directory comes first on its sys.path: make it import this checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
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
