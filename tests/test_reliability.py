"""Reliability at CI size: lost workers, Redis restarts, load, and credentials.

Each test runs one scenario of scripts/reliability.py (its own redis-server with AOF
everysec + noeviction on a free port, its own workers) and checks the figures it reports.
The full sizes run with `python scripts/reliability.py --all`, which writes
docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import battery

pytestmark = pytest.mark.slow


def _assert_nothing_lost_or_doubled(res: dict[str, Any]) -> None:
    assert res["lost"] == 0, res["examples"]["lost"]
    assert res["duplicate_step_successes"] == 0, res["examples"]["duplicate_step_successes"]
    assert res["duplicate_run_endings"] == 0, res["examples"]["duplicate_run_endings"]
    assert res["failed"] == 0, res["examples"]["failed"]


def _assert_nothing_hanging(res: dict[str, Any]) -> None:
    """Every run ended: a hanging run's record shows each unfinished step and its message."""
    assert res["hanging"] == 0, res["examples"]["hanging"]


@pytest.mark.timeout(200)
def test_sigkill_soak_every_run_succeeds_and_every_step_succeeds_once(tmp_path: Path) -> None:
    # Given 3 workers running 20 runs of 5 steps (canvas, dynamic, and canvas with a matrix,
    # an if: and a for_each)
    # When a random worker's whole process group is SIGKILLed every 2.5 s and restarted
    res = battery(tmp_path, "--soak")["soak"]

    # Then nothing is lost or recorded twice, and repeated executions are only recoveries
    assert "error" not in res, res
    assert res["kills"] >= 2
    assert res["steps_checked"] == res["steps_expected"] >= res["runs"] * 5
    _assert_nothing_lost_or_doubled(res)
    assert res["repeats_not_after_a_kill"] == 0
    _assert_nothing_hanging(res)
    assert res["succeeded"] == res["runs"], res["examples"]
    if res["recovered_steps"]:
        assert res["recovery_delay_max_s"] < 4 * 4  # lease 4 s: recovered well within 4 leases


@pytest.mark.timeout(200)
def test_redis_restart_mid_run_loses_nothing_and_leaves_nothing_hanging(tmp_path: Path) -> None:
    # Given runs in flight (canvas and dynamic steps running) on AOF + noeviction Redis
    # When Redis is stopped with SIGTERM, and in a second round with SIGKILL, then restarted
    res = battery(tmp_path, "--redis-restart")["redis_restart"]

    # Then workers and the client reconnect by themselves and every run ends
    assert "error" not in res, res
    assert res["workers_alive_after"] == "2/2"
    for case in res["cases"].values():
        assert case["submit_while_down"].startswith("BackendUnavailable")
        _assert_nothing_lost_or_doubled(case)
        assert case["steps_checked"] == case["steps_expected"] >= case["runs"] * 5
    for case in res["cases"].values():
        _assert_nothing_hanging(case)
        assert case["succeeded"] == case["runs"]


@pytest.mark.timeout(120)
def test_load_every_run_completes_once_and_worker_memory_stays_bounded(tmp_path: Path) -> None:
    # Given 2 workers, when 100 runs of 5 steps are submitted as fast as submit() returns
    res = battery(tmp_path, "--load")["load"]

    # Then all complete, each step recorded succeeded exactly once, none lost
    assert "error" not in res, res
    assert res["runs"] == 100 and res["succeeded"] == 100, res["examples"]
    assert res["hanging"] == 0
    _assert_nothing_lost_or_doubled(res)
    assert res["steps_checked"] == 500 and res["step_starts"] == 500
    assert res["repeated_executions"] == 0
    # and the workers' memory after the burst is back near where it started
    for before, after in zip(res["rss_mb_before"], res["rss_mb_after"], strict=True):
        assert after < before * 1.25 + 32, (res["rss_mb_before"], res["rss_mb_after"])


@pytest.fixture(scope="module")
def security(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return battery(tmp_path_factory.mktemp("security"), "--security")["security"]


@pytest.mark.timeout(120)
def test_a_password_url_never_shows_in_output_events_logs_flower_or_errors(
    security: dict[str, Any],
) -> None:
    # Given Redis with requirepass and every URL written redis://:PASSWORD@host:port/0,
    # a run went end to end through a worker
    assert "error" not in security, security
    assert security["run_status"] == "succeeded"
    places = set(security["places_checked"])
    for place in (
        "trigger --wait --json",
        "status",
        "status --json",
        "events --run --json",
        "logs",
        "runs --json",
        "worker log",
        "trigger, wrong password (error)",
        "status, wrong password (error)",
        "flower /broker",
        "flower /api/workers?refresh=1",
    ):
        assert place in places
    assert not security["empty_places"]
    assert not security["unavailable_places"]
    # Then the password (and a wrong one) appear nowhere
    assert security["leaks"] == {}
    # and a wrong password is exit 3 with a message that says what is wrong
    assert security["wrong_password_trigger_exit"] == 3
    assert security["wrong_password_status_exit"] == 3
    assert "password" in security["wrong_password_message"]


def test_steps_do_not_see_the_redis_password(security: dict[str, Any]) -> None:
    assert security["step_env_has_password"] == "no"


@pytest.mark.timeout(90)
def test_rediss_tls_url_runs_a_workflow_end_to_end(tmp_path: Path) -> None:
    res = battery(tmp_path, "--tls")["tls"]
    if "skipped" in res:
        pytest.skip(res["skipped"])
    assert "error" not in res, res
    assert res["trigger_exit"] == 0, res["trigger_tail"]
    assert not res["password_leaked"]
