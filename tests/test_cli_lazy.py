"""The CLI loads each command's module when that command runs: every command is found where
``COMMAND_MODULES`` says, and a command loads only the layers it uses (``validate`` no
Celery, Redis or kombu; ``trigger`` no Flower)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from runbook_celery.cli import COMMAND_MODULES, cli

pytestmark = pytest.mark.timeout(60)


def test_every_module_holds_exactly_the_commands_the_group_maps_to_it() -> None:
    for module_name in set(COMMAND_MODULES.values()):
        module = importlib.import_module(f"runbook_celery.cli.{module_name}")
        mapped = {name for name, where in COMMAND_MODULES.items() if where == module_name}
        assert {c.name for c in module.COMMANDS} == mapped, module_name


def test_every_command_resolves_and_help_lists_them_all() -> None:
    # the group's own settings: click keeps the help option of the first context it saw
    ctx = click.Context(cli, info_name="runbook-celery", **cli.context_settings)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
    assert cli.get_command(ctx, "no-such-command") is None
    text = cli.get_help(ctx)
    for name in COMMAND_MODULES:
        assert f"  {name} " in text, name


def _loaded_after(command: str) -> set[str]:
    code = (
        "import sys, click\n"
        "from runbook_celery.cli import cli\n"
        f"cli.get_command(click.Context(cli), {command!r})\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_validate_loads_neither_celery_nor_redis_nor_kombu() -> None:
    loaded = _loaded_after("validate")
    assert not loaded & {"celery", "redis", "kombu", "flower", "tornado"}, loaded


def test_trigger_loads_no_flower() -> None:
    loaded = _loaded_after("trigger")
    assert "celery" in loaded  # it publishes the run
    assert not loaded & {"flower", "tornado"}, loaded
