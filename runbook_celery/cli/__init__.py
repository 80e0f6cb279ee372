"""The `runbook-celery` command. The only place errors become messages and exit codes.

Exit codes: 0 ok, 1 run failed, 2 invalid input, 3 Redis/broker unreachable, 4 not found,
5 --timeout ran out before the run ended (the run goes on).

Each command lives in the module of its area, loaded only when that command runs (or
``--help`` lists it): ``validate`` loads no Celery, ``trigger`` no Flower, so a command
pays only for what it uses.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..core.errors import EXIT_UNAVAILABLE, InvalidDefinition, RunbookError

# command name -> the module (in this package) whose ``COMMANDS`` holds it
COMMAND_MODULES: dict[str, str] = {
    "validate": "definitions",
    "plan": "definitions",
    "trigger": "runs",
    "status": "runs",
    "worker": "workercmd",
    **dict.fromkeys(
        ["cancel", "rerun", "pause", "resume", "approve", "reject", "retry", "skip", "abort"],
        "control",
    ),
    **dict.fromkeys(["logs", "events", "runs", "watch", "graph"], "observe"),
    "flower": "dashboard",
    **dict.fromkeys(["schema", "beat", "schedules"], "ecosystem"),
    "dead-letters": "deadletters",
    "notifier": "notify",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when first asked for (click's lazy-loading
    pattern), from ``COMMAND_MODULES``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f".{module_name}", __name__)
        commands: list[click.Command] = module.COMMANDS
        return next(c for c in commands if c.name == cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runbook-celery")
def cli() -> None:
    """Run YAML workflows of Bash steps on Celery workers, with Redis as broker and backend."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn our errors into messages and exit codes."""
    try:
        code = cli.main(args=argv, prog_name="runbook-celery", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except InvalidDefinition as exc:
        for problem in exc.problems:
            click.echo(problem.render(), err=True)
        code = exc.exit_code
    except RunbookError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            click.echo(f"error: {line}", err=True)
        code = exc.exit_code
    except Exception as exc:
        describe = _backend_error_description(exc)
        if describe is None:
            raise
        # a Redis or broker failure on a path that did not name what it was doing
        click.echo(f"error: {describe}", err=True)
        code = EXIT_UNAVAILABLE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)


def _backend_error_description(exc: Exception) -> str | None:
    """What a Redis or broker error means for the user (exit 3); None for any other error.

    The list of such errors lives with the connections (``store.redisconn``), which load
    redis and kombu. A command that never loaded them (``validate``, ``plan``) cannot have
    raised one, so it is looked up only where they are loaded, and ``validate`` pays for
    neither.
    """
    if "redis" not in sys.modules and "kombu" not in sys.modules:
        return None
    redisconn = importlib.import_module("..store.redisconn", __name__)
    if not isinstance(exc, redisconn.BACKEND_ERRORS):
        return None
    description: str = redisconn.describe_backend_error(exc)
    return description
