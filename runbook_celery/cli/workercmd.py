"""``runbook-celery worker``: a Celery worker for runbook steps, with the defaults an operator
would choose, and the step-user switch."""

from __future__ import annotations

import os

import click

from ..core.settings import get_settings, warn_of_passwords_in_env
from ..engine import stepuser
from ..engine.app import app
from ..engine.taskevents import quiet_task_lines


@click.command(context_settings={"ignore_unknown_options": True})
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


COMMANDS: list[click.Command] = [worker]
