"""`runbook-celery worker` starts with the defaults an operator would choose (README, "Workers").

No gossip or mingle (workers learn nothing from each other that runbook-celery uses: state
lives in Redis, cancel does not go through Celery's revoke) and no INFO line per task
received or succeeded (the run store and events record every step); both come back on
request. The worker itself is not started: what it would be started with is captured.
"""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from runbook_celery.cli import cli, workercmd
from runbook_celery.engine import taskevents

TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    argvs: list[list[str]] = []
    monkeypatch.setattr(workercmd.app, "worker_main", lambda argv: argvs.append(list(argv)))
    for name in TASK_LOGGERS:  # whatever an earlier test left on Celery's loggers
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", [])
    return argvs


def _quiet(name: str) -> bool:
    return any(isinstance(f, taskevents._RoutineTaskLines) for f in logging.getLogger(name).filters)


def test_a_worker_starts_without_gossip_mingle_or_a_line_per_task(started):
    result = CliRunner().invoke(cli, ["worker", "-Q", "q1"])
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert "--without-gossip" in argv and "--without-mingle" in argv
    assert argv[argv.index("-Q") + 1] == "q1"
    assert "-E" in argv  # task events for Flower
    assert all(_quiet(name) for name in TASK_LOGGERS)


def test_gossip_mingle_and_task_lines_come_back_when_asked(started):
    result = CliRunner().invoke(cli, ["worker", "--gossip-and-mingle", "--log-tasks"])
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert "--without-gossip" not in argv and "--without-mingle" not in argv
    assert not any(_quiet(name) for name in TASK_LOGGERS)
