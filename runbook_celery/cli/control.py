"""Commands that act on runs: cancel, rerun, pause, resume, approve, reject, retry, skip, abort."""

from __future__ import annotations

import json

import click

from ..client.api import rerun as do_rerun
from ..client.control import RunControl
from ..client.render import record_json
from ..client.run import Run
from ..core.errors import InvalidOperation
from ..store.redisconn import backend_errors
from .common import report_started
from .options import check_timeout, timeout_option
from .runid import run_id_argument


@click.command()
@run_id_argument()
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel a run: nothing new starts; running steps are stopped (SIGTERM, grace, SIGKILL)."""

    with backend_errors(f"cancel run {run_id}"):
        record = Run(run_id).cancel()
    click.echo(json.dumps(record_json(record)) if as_json else f"cancel requested for {run_id}")


@click.command()
@run_id_argument()
@click.option("--from-failed", is_flag=True, help="Reuse succeeded steps; run the rest.")
@click.option("--from", "from_step", metavar="STEP", help="Rerun STEP and everything after it.")
@click.option(
    "--wait", is_flag=True, help="Follow the new run to its end; exit 0 if it succeeded, 1 if not."
)
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the new run's record as JSON.")
def rerun(
    run_id: str,
    from_failed: bool,
    from_step: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Start a new run from RUN_ID's snapshot (never today's YAML); prints the new run id.

    Steps taken from the original run show as `succeeded (reused)`. With --json, the new
    run's record as `status --json` prints it: at once, or with --wait when the run ends.
    """

    if from_failed and from_step:
        raise InvalidOperation("use either --from-failed or --from STEP, not both")
    check_timeout(timeout, wait)
    run = do_rerun(run_id, from_failed=from_failed, from_step=from_step)
    report_started(run, wait, timeout, as_json)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        if "=" not in item:
            raise InvalidOperation(f"{what} {item!r} must look like KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = value
    return out


by_option = click.option("--by", default=None, help="Who decides (default: your user name).")


@click.command()
@run_id_argument()
@by_option
def pause(run_id: str, by: str | None) -> None:
    """Pause a run: no new step starts; running steps finish."""

    RunControl(run_id).pause(by)
    click.echo(f"paused {run_id}")


@click.command()
@run_id_argument()
@by_option
def resume(run_id: str, by: str | None) -> None:
    """Resume a paused run where it stopped."""

    n = RunControl(run_id).resume(by)
    click.echo(f"resumed {run_id} ({n} waiting steps released)")


@click.command()
@run_id_argument()
@click.argument("step")
@by_option
def approve(run_id: str, step: str, by: str | None) -> None:
    """Approve a step waiting at its approval gate."""

    RunControl(run_id).approve(step, by)
    click.echo(f"approved {step} of {run_id}")


@click.command()
@run_id_argument()
@click.argument("step")
@by_option
def reject(run_id: str, step: str, by: str | None) -> None:
    """Reject a step at its approval gate: it fails with reason rejected."""

    RunControl(run_id).reject(step, by)
    click.echo(f"rejected {step} of {run_id}")


@click.command("retry")
@run_id_argument()
@click.argument("step")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Changed environment.")
@by_option
def retry_step(run_id: str, step: str, env: tuple[str, ...], by: str | None) -> None:
    """Run a step awaiting a decision again (optionally with changed environment)."""

    RunControl(run_id).retry_step(step, _pairs(env, "--env"), by)
    click.echo(f"retrying {step} of {run_id}")


@click.command("skip")
@run_id_argument()
@click.argument("step")
@click.option(
    "--output",
    "outputs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Outputs the step is taken to have produced.",
)
@by_option
def skip_step(run_id: str, step: str, outputs: tuple[str, ...], by: str | None) -> None:
    """Skip a step awaiting a decision; the run goes on with the supplied outputs."""

    RunControl(run_id).skip_step(step, _pairs(outputs, "--output"), by)
    click.echo(f"skipped {step} of {run_id}")


@click.command()
@run_id_argument()
@by_option
def abort(run_id: str, by: str | None) -> None:
    """Fail a run that is awaiting a decision, as if no pause had been asked for."""

    RunControl(run_id).abort(by)
    click.echo(f"aborted {run_id}")


COMMANDS = [cancel, rerun, pause, resume, approve, reject, retry_step, skip_step, abort]
