"""The `runbook-celery` command. The only place errors become messages and exit codes.

Exit codes: 0 ok, 1 run failed, 2 invalid input, 3 Redis/broker unreachable, 4 not found,
5 --timeout ran out before the run ended (the run goes on).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..client.api import get_run, submit
from ..core.errors import (
    EXIT_INVALID,
    EXIT_UNAVAILABLE,
    InvalidDefinition,
    InvalidParams,
    RunbookError,
)
from ..core.settings import get_settings, warn_of_passwords_in_env
from ..definition.loader import load_workflow
from ..engine import stepuser
from ..engine.app import app
from ..engine.taskevents import quiet_task_lines
from ..plan.compile import make_plan
from ..store.redisconn import BACKEND_ERRORS, describe_backend_error
from . import control as cli_control
from . import ecosystem as cli_ecosystem
from . import observe as cli_observe
from .common import report_started, show_record
from .ecosystem import check_workflows, expand_workflow_paths
from .options import check_timeout, timeout_option
from .runid import run_id_argument

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidParams(f"param {pair!r} must look like KEY=VALUE")
        key, value = pair.split("=", 1)
        params[key.strip()] = value
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runbook-celery")
def cli() -> None:
    """Run YAML workflows of Bash steps on Celery workers, with Redis as broker and backend."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one list of {file, valid, problems} on stdout instead of text.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--lint",
    is_flag=True,
    help="Also run shellcheck on every run: and script:, reported at the file's lines.",
)
def validate(files: tuple[Path, ...], fmt: str, as_json: bool, lint: bool) -> None:
    """Check workflow files; print FILE:LINE: path: message on stderr for each problem.

    FILES may be files, directories (their *.yaml and *.yml files) or quoted glob patterns
    such as 'flows/**/*.yaml'. Given a directory or a pattern, a last line says
    `N files, M invalid`. Exit 0 if every file is valid, 2 if not. With --lint, a
    shellcheck finding in a step's Bash counts as a problem too.
    """

    fmt = "json" if as_json else fmt
    expansion = expand_workflow_paths(files)
    checked: list[tuple[str, list[Any]]] = []
    for file, problems in check_workflows(expansion.items, lint=lint):
        checked.append((file, problems))
        if fmt == "text":
            for problem in problems:
                click.echo(problem.render(), err=True)
            if not problems:
                click.echo(f"{file}: ok")
    bad = sum(1 for _, problems in checked if problems)
    if fmt == "json":
        report = [
            {"file": file, "valid": not problems, "problems": [p.to_dict() for p in problems]}
            for file, problems in checked
        ]
        click.echo(json.dumps(report))
    elif expansion.expanded:
        click.echo(f"{len(checked)} file{'' if len(checked) == 1 else 's'}, {bad} invalid")
    if bad:
        raise SystemExit(EXIT_INVALID)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
def plan(file: Path) -> None:
    """Print how a workflow is dispatched: its Celery canvas, or dynamic dispatch."""

    loaded = load_workflow(file)
    click.echo(f"workflow {loaded.workflow.name}: {len(loaded.workflow.steps)} steps")
    click.echo(make_plan(loaded.graph, loaded.workflow).render())


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "-p", "--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a param."
)
@click.option(
    "--wait", is_flag=True, help="Follow the run to its end; exit 0 if it succeeded, 1 if not."
)
@timeout_option
@json_option
def trigger(
    file: Path, params: tuple[str, ...], wait: bool, timeout: float | None, as_json: bool
) -> None:
    """Validate FILE, snapshot it and start a run; prints the run id."""

    check_timeout(timeout, wait)
    report_started(submit(file, _parse_params(params)), wait, timeout, as_json)


@cli.command()
@run_id_argument()
@json_option
def status(run_id: str, as_json: bool) -> None:
    """Show a run's current record.

    RUN_ID, here and in every command, may be a unique prefix of a run id (4 characters or
    more), as git takes commits: an ambiguous one exits 2 listing the runs, none exits 4.
    Step exit codes show a kill by a signal as 128+N with the signal's name, `143 (SIGTERM)`;
    the JSON has `"exit_code": 143, "signal": "SIGTERM"`. A step a rerun took from its original
    run shows `succeeded (reused)` (`"reused": true`).
    """

    show_record(get_run(run_id), as_json)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=int, default=None, help="Parallel steps (default: CPUs).")
@click.option("-Q", "--queues", default=None, help="Comma-separated queues to consume.")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "--step-user",
    default=None,
    metavar="NAME",
    help="Run steps as this unprivileged user; the worker (started as root) stays root.",
)
@click.option(
    "--log-tasks",
    is_flag=True,
    help="Log every task received and succeeded (Celery's INFO lines; off: a step failure "
    "is still one line).",
)
@click.option(
    "--gossip-and-mingle",
    is_flag=True,
    help="Turn Celery's gossip and mingle back on (off: nothing here needs them).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int | None,
    queues: str | None,
    loglevel: str,
    step_user: str | None,
    log_tasks: bool,
    gossip_and_mingle: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start a Celery worker for runbook steps (extra arguments go to Celery).

    Defaults an operator would choose: no gossip or mingle (workers learn nothing from each
    other that runbook-celery uses: state lives in Redis, and cancel does not use Celery's
    revoke), and no INFO line per task received or succeeded (the run store and events
    record every step; ``--log-tasks`` brings the lines back)."""

    argv = ["worker", f"--loglevel={loglevel}", "-E", "-Q", queues or get_settings().default_queue]
    if not gossip_and_mingle:
        argv += ["--without-gossip", "--without-mingle"]
    if not log_tasks:
        quiet_task_lines()
    if step_user is not None:
        _use_step_user(step_user, celery_args)
    warn_of_passwords_in_env()
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    argv += list(celery_args)
    app.worker_main(argv)


def _use_step_user(name: str, celery_args: tuple[str, ...]) -> None:
    """Check ``--step-user`` against how the worker runs, then switch steps to that user."""

    if any(a == "--uid" or a.startswith("--uid=") for a in celery_args):
        raise click.UsageError(
            "--step-user and --uid do not go together: --uid makes the whole worker that "
            "user, which then cannot switch to another one for its steps; use --step-user "
            "(the worker stays root, its steps run as NAME) or --uid (worker and steps run "
            "as one user), see docs/deployment.md"
        )
    if os.geteuid() != 0:
        raise click.UsageError(
            "--step-user needs a worker started as root (it switches each step to NAME)"
        )
    missing = stepuser.missing_capabilities()
    if missing:
        raise click.UsageError(
            f"--step-user needs the capabilities {', '.join(missing)}, which this worker lacks "
            "(add them to the unit's CapabilityBoundingSet or the container's cap_add)"
        )
    try:
        stepuser.use(stepuser.StepUser.lookup(name))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--step-user") from None


# the commands of each area live in their own module, which exposes ``COMMANDS``
for _command in (*cli_control.COMMANDS, *cli_observe.COMMANDS, *cli_ecosystem.COMMANDS):
    cli.add_command(_command)


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
    except BACKEND_ERRORS as exc:
        # a Redis or broker failure on a path that did not name what it was doing
        click.echo(f"error: {describe_backend_error(exc)}", err=True)
        code = EXIT_UNAVAILABLE
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code or 0)
