"""The peers scenario's pure helpers: where peers live, what the report says, the drivers.

Nothing here installs or runs a peer; those are `python scripts/bench_peers.py install`
and `python scripts/bench.py --scenarios peers`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_peers
import bench_report


def test_peers_live_in_the_cache_unless_the_env_moves_them(tmp_path: Path) -> None:
    assert bench_peers.peers_dir({}) == Path.home() / ".cache" / "runbook-bench-peers"
    assert bench_peers.peers_dir({bench_peers.DIR_ENV: str(tmp_path)}) == tmp_path
    assert bench_peers.layout("luigi", tmp_path).root == tmp_path / "luigi"


def test_status_tells_how_to_install_a_missing_peer(tmp_path: Path) -> None:
    usable, why = bench_peers.status("prefect", tmp_path)
    assert not usable
    assert why == "not installed (install with `python scripts/bench_peers.py install prefect`)"


def test_status_reports_a_failed_install_with_its_last_line(tmp_path: Path) -> None:
    lay = bench_peers.layout("airflow", tmp_path)
    lay.root.mkdir()
    lay.failure.write_text("RuntimeError: pip exited 1:\nERROR: ResolutionImpossible\n")
    usable, why = bench_peers.status("airflow", tmp_path)
    assert not usable
    assert why == "install failed: ERROR: ResolutionImpossible"


def test_status_needs_both_the_record_and_the_virtualenv(tmp_path: Path) -> None:
    lay = bench_peers.layout("luigi", tmp_path)
    lay.root.mkdir()
    lay.marker.write_text(json.dumps({"version": "3.6.0", "installed": "2026-01-02"}))
    assert not bench_peers.status("luigi", tmp_path)[0]
    lay.python.parent.mkdir(parents=True)
    lay.python.touch()
    assert bench_peers.status("luigi", tmp_path) == (True, "installed 2026-01-02")
    assert bench_peers.installed_version("luigi", tmp_path) == "3.6.0"


def test_descendants_follow_the_tree_and_nothing_else() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert bench_peers.descendants(10, parents) == {10, 11, 12, 13}
    assert bench_peers.descendants(12, parents) == {12}


@pytest.mark.parametrize(
    "body",
    [*(p.body for p in bench_peers.PEERS.values()), bench_peers.RUNBOOK_BODY],
    ids=[*bench_peers.PEERS, "runbook-celery"],
)
def test_every_driver_is_valid_python(body: str) -> None:
    compile(bench_peers.driver_source(body), "driver.py", "exec")


def test_the_report_lists_every_engine_whatever_its_status() -> None:
    peers = {
        "runbook-celery": bench_peers.PeerResult(
            "runbook-celery", "0.1", "ok", first=1.5, runs=[0.1, 0.2, 0.3], peak_rss_mb=120.4
        ),
        "luigi": bench_peers.PeerResult("Luigi", status="not installed (install with …)"),
    }
    text = bench_report.peers_section(peers)
    assert "| runbook-celery | 0.1 | 1.50 | 0.200 [0.100–0.300] | 120 | ok |" in text  # noqa: RUF001
    assert "| Luigi | — | — | — | — | not installed (install with …) |" in text
