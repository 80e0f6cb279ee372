"""Broker or Redis unreachable: fail fast with exit 3, a clear message, nothing recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PREFIX, TEST_REDIS_URL, run_cli

from runbook_celery import BackendUnavailable, submit
from runbook_celery.core.settings import Settings

DIAMOND = str(Path(__file__).parent.parent / "definitions" / "diamond.yaml")


def test_trigger_with_unreachable_broker_exits_3_and_records_nothing(redis_client):
    before = redis_client.zcard(f"{PREFIX}:runs")
    res = run_cli("trigger", DIAMOND, env={"RUNBOOK_BROKER_URL": "redis://:s3cret@127.0.0.1:1/0"})
    assert res.returncode == 3
    assert "unreachable" in res.stderr and "s3cret" not in res.stderr
    assert "Traceback" not in res.stderr
    assert redis_client.zcard(f"{PREFIX}:runs") == before


def test_trigger_with_unreachable_redis_exits_3():
    res = run_cli("trigger", DIAMOND, env={"RUNBOOK_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"})
    assert res.returncode == 3
    assert "s3cret" not in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_submit_raises_our_own_error_when_redis_is_down():
    settings = Settings(redis_url="redis://127.0.0.1:1/0", broker_url=TEST_REDIS_URL)
    with pytest.raises(BackendUnavailable):
        submit(DIAMOND, settings=settings)
