"""Starting a run and reading its record: ``trigger`` and ``status``."""

from __future__ import annotations

from pathlib import Path

import click

from ..client.api import get_run, submit
from ..core.errors import InvalidParams
from .common import report_started, show_record
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


@click.command()
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


@click.command()
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


COMMANDS: list[click.Command] = [trigger, status]
