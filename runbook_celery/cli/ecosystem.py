"""Fitting into editors and schedulers: the definition format's JSON Schema, beat, schedules.

Loaded by the ``cli`` group (``COMMAND_MODULES``) through ``COMMANDS``. The schema is
generated from the pydantic models in ``model.py`` (with ``stepmodel.py``); a copy is shipped as
``runbook_celery/schema.json`` so editors can point at it
(``# yaml-language-server: $schema=...``) and a test keeps that copy current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..client.schedule import ScheduledDefinition, read_definitions, scheduler_for
from ..core.errors import EXIT_INVALID
from ..definition.cron import Cron, Every
from ..definition.firetimes import Fire, upcoming
from ..definition.model import Workflow
from ..engine.app import app
from .terminal import echo as echo_untrusted
from .workflowfiles import check_workflows, workflow_files_in

# Draft 7 rather than pydantic's 2020-12: the YAML language server (VS Code, Neovim) validates
# with draft 7 and warns on later dialects; the generated schema uses no keyword newer than 7.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_ID = "urn:runbook-celery:workflow"
SCHEMA_TITLE = "runbook-celery workflow"
SCHEMA_FILE = Path(__file__).parent.parent / "schema.json"  # runbook_celery/schema.json


def workflow_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file, as the models define it (aliases such as ``if``)."""
    generated = Workflow.model_json_schema(by_alias=True)
    generated.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": SCHEMA_TITLE, **generated}


def schema_text() -> str:
    """The schema exactly as committed in ``schema.json`` (stable order, trailing newline)."""
    return json.dumps(workflow_schema(), indent=2, ensure_ascii=False) + "\n"


@click.command()
def schema() -> None:
    """Print the JSON Schema of workflow files (for editors and CI checks).

    The same schema ships as runbook_celery/schema.json. Editors that use the YAML language
    server (VS Code, Neovim, Helix, ...) check and complete a workflow whose first line is:

    \b
        # yaml-language-server: $schema=PATH/TO/schema.json
    """
    click.echo(schema_text(), nl=False)


@click.command()
@click.option(
    "-d",
    "--definitions",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder whose *.yaml/*.yml files with a `schedule:` are triggered.",
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(definitions: Path, loglevel: str) -> None:
    """Trigger workflows on their `schedule:` (Celery beat); run exactly one per Redis prefix.

    Each due workflow is validated and submitted as a normal run. The folder is re-read
    within a second when a file in it is added, edited or removed; invalid files are
    logged and left out. With `overlap: skip` (the default) a run is not started while the
    previous scheduled run of that workflow has not finished.
    """

    # celery-types: a scheduler's name only; Celery's Beat takes the class as well
    app.Beat(scheduler=scheduler_for(definitions.resolve()), loglevel=loglevel).run()  # type: ignore[arg-type]


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime:
    """``--after``: ISO 8601 with an offset or ``Z`` (a zone-less time would be a guess)."""
    if value is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ISO 8601, e.g. 2026-03-07T00:00Z") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no UTC offset: add Z or e.g. +01:00")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Listed:
    """A scheduled definition and its next fire times (none for ``@every``)."""

    definition: ScheduledDefinition
    fires: list[Fire]

    def to_dict(self) -> dict[str, Any]:
        d, parsed = self.definition, self.definition.parsed
        return {
            "file": str(d.path),
            "workflow": d.workflow,
            "schedule": d.spec,
            "timezone": parsed.zone_name if isinstance(parsed, Cron) else None,
            "every_seconds": parsed.seconds if isinstance(parsed, Every) else None,
            "overlap": d.overlap,
            "next": [
                {
                    "at": f.at.isoformat().replace("+00:00", "Z"),
                    "local": f.local.isoformat(),
                    "skipped": f.skipped.isoformat() if f.skipped else None,
                }
                for f in self.fires
            ],
        }

    def lines(self) -> list[str]:
        d, parsed = self.definition, self.definition.parsed
        zone = f"  {parsed.zone_name}" if isinstance(parsed, Cron) else ""
        out = [f"{d.workflow}  {d.spec}{zone}  overlap: {d.overlap}  ({d.path})"]
        if isinstance(parsed, Every):
            out.append(f"  every {parsed.seconds} s, counted from when beat starts or last ran it")
        for fire in self.fires:
            line = f"  {fire.local:%Y-%m-%d %H:%M %Z}  =  {fire.at:%Y-%m-%d %H:%M} UTC"
            if fire.skipped is not None:
                line += f"  (for {fire.skipped:%H:%M}, which the DST change skips)"
            out.append(line)
        return out


def list_schedules(directory: Path, after: datetime, count: int) -> list[Listed]:
    """The scheduled files of ``directory`` (as beat reads them) with their next fires."""
    return [
        Listed(d, upcoming(d.parsed, after, count) if isinstance(d.parsed, Cron) else [])
        for d in read_definitions(directory, on_problem=lambda _: None)
    ]


@click.command()
@click.option(
    "-d",
    "--definitions",
    default=".",
    show_default=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of workflow files, as given to `beat --definitions`.",
)
@click.option(
    "-n",
    "count",
    default=3,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Fire times to list per workflow.",
)
@click.option(
    "--after",
    metavar="TIME",
    callback=_instant,
    help="List fire times after TIME (ISO 8601 with an offset, e.g. 2026-03-07T00:00Z) "
    "instead of now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
def schedules(definitions: Path, count: int, after: datetime, as_json: bool) -> None:
    """List the scheduled workflows of a folder with their next fire times.

    Each fire time is shown in the workflow's time zone and in UTC; a time that a DST change
    skips fires when the clock jumps, and says so. Invalid files are reported on stderr as
    `validate` does, and make the exit code 2. Nothing is read from Redis.
    """
    problems = [
        problem for _, found in check_workflows(workflow_files_in(definitions)) for problem in found
    ]
    for problem in problems:
        echo_untrusted(problem.render(), err=True)
    listing = list_schedules(definitions, after, count)
    if as_json:
        click.echo(json.dumps([item.to_dict() for item in listing]))
    elif not listing:
        click.echo(f"no scheduled workflows in {definitions}", err=True)
    else:
        echo_untrusted("\n".join(line for item in listing for line in item.lines()))
    if problems:
        raise SystemExit(EXIT_INVALID)


# dead-letters and notifier: here to keep cli.py as is
COMMANDS = [schema, beat, schedules]
