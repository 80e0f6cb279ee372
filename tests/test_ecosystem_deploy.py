"""docker-compose.yml and the Dockerfile run commands that exist and that the docs explain."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _documentation() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(p.read_text(encoding="utf-8") for p in pages)


def _dockerfile_cmd() -> list[str]:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    cmds = [line.split(None, 1)[1] for line in lines if line.upper().startswith("CMD ")]
    assert len(cmds) == 1, "the Dockerfile should have exactly one CMD"
    return json.loads(cmds[0])  # exec form, so signals reach the worker


def _commands() -> list[list[str]]:
    """Every command the images run: the Dockerfile's CMD and each built service's command."""
    services = _compose()["services"]
    built = [s["command"] for s in services.values() if "build" in s and "command" in s]
    return [_dockerfile_cmd(), *built]


def test_compose_has_redis_worker_and_flower():
    services = _compose()["services"]
    assert {"redis", "worker", "flower"} <= set(services)


def test_redis_keeps_an_append_only_file_and_never_evicts():
    command = _compose()["services"]["redis"]["command"]
    words = command if isinstance(command, list) else command.split()
    assert words[words.index("--appendonly") + 1] == "yes"
    assert words[words.index("--maxmemory-policy") + 1] == "noeviction"


def test_workers_and_flower_reach_the_compose_redis():
    services = _compose()["services"]
    for name in ("worker", "flower"):
        assert services[name]["environment"]["RUNBOOK_REDIS_URL"].startswith("redis://redis:")
        assert "redis" in services[name]["depends_on"]


def test_the_dockerfile_exists_and_runs_a_worker_by_default():
    assert DOCKERFILE.is_file()
    assert _dockerfile_cmd()[:2] == ["runbook-celery", "worker"]


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_container_command_is_documented(argv: list[str]):
    # The program and subcommand (without per-deployment options) appear in README or docs/
    assert argv[0] in ("runbook-celery", "celery")
    head = " ".join(argv[:4] if argv[0] == "celery" else argv[:2])
    assert head in _documentation(), f"{head!r} is not documented in README.md or docs/"


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_container_command_exists(argv: list[str]):
    # compose mounts ./definitions at /app/definitions: check the command against the original
    argv = [str(ROOT / "definitions") if a == "/app/definitions" else a for a in argv]
    if argv[0] == "runbook-celery":
        # Given the live CLI, the subcommand exists and accepts these options
        ctx = cli.make_context("runbook-celery", argv[1:], resilient_parsing=True)
        command = cli.get_command(ctx, argv[1])
        assert command is not None, f"runbook-celery has no command {argv[1]!r}"
        # parent=ctx: click caches each command's help option from the first context it sees
        command.make_context(argv[1], argv[2:], parent=ctx)
    else:
        # celery -A runbook_celery ...: the -A target resolves to our Celery app
        from celery.app.utils import find_app

        from runbook_celery.app import app

        assert argv[:3] == ["celery", "-A", "runbook_celery"]
        assert find_app("runbook_celery") is app


def test_compose_scaling_and_queue_commands_are_documented():
    docs = _documentation()
    assert "docker compose up -d --scale worker=N" in docs
    assert re.search(r"runbook-celery worker -Q \w+", docs)
