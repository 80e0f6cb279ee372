"""``runbook-celery flower``: Flower with the runs pages (``web/``). Its own module, since
Flower and tornado are loaded by this command only."""

from __future__ import annotations

from pathlib import Path

import click

from ..engine.app import app
from ..web.server import serve

FLOWER_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=int, default=5555, show_default=True)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on; Flower has no login unless you pass --basic-auth etc.",
)
@click.option(
    "--definitions",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of workflow files offered by the trigger form and POST /api/runs.",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, definitions: Path | None, flower_args: tuple[str, ...]) -> None:
    """Start Flower for runbook's Celery app, with runs at /runs (extra arguments go to Flower).

    One process and port: Flower's workers, tasks and broker pages, and our runs list,
    run pages (live DAG, steps, logs, buttons), trigger form and JSON API under /api/runs,
    all behind Flower's login (--basic-auth user:password, or --auth with OAuth) and
    --url_prefix. Without a login, control actions are refused unless
    FLOWER_UNAUTHENTICATED_API=true (Flower's rule for its API). Steps are also Flower
    tasks named <workflow>.<step>, with `run=<id> step=<id>` in their args.
    """

    argv = [
        f"--port={port}",
        f"--address={address}",
        f"--tasks_columns={FLOWER_COLUMNS}",
        *flower_args,
    ]
    serve(app, argv, definitions.resolve() if definitions else None)


COMMANDS: list[click.Command] = [flower]
