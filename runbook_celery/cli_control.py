"""Commands that act on runs: cancel and rerun."""

from __future__ import annotations

import json

import click

from .errors import InvalidOperation


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def cancel(run_id: str, as_json: bool) -> None:
    """Cancel a run: nothing new starts; running steps are stopped (SIGTERM, grace, SIGKILL)."""
    from .api import Run

    record = Run(run_id).cancel()
    click.echo(json.dumps(record.to_dict()) if as_json else f"cancel requested for {run_id}")


@click.command()
@click.argument("run_id")
@click.option("--from-failed", is_flag=True, help="Reuse succeeded steps; run the rest.")
@click.option("--from", "from_step", metavar="STEP", help="Rerun STEP and everything after it.")
@click.option("--wait", is_flag=True, help="Follow the new run to its end.")
def rerun(run_id: str, from_failed: bool, from_step: str | None, wait: bool) -> None:
    """Start a new run from RUN_ID's snapshot (never today's YAML); prints the new run id."""
    from .api import rerun as do_rerun

    if from_failed and from_step:
        raise InvalidOperation("use either --from-failed or --from STEP, not both")
    run = do_rerun(run_id, from_failed=from_failed, from_step=from_step)
    click.echo(run.id)
    if wait:
        from .cli import _exit_for, _follow
        from .render import record_table

        record = _follow(run, click.echo)
        click.echo(record_table(record))
        raise SystemExit(_exit_for(record.status))


COMMANDS = [cancel, rerun]
