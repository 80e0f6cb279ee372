"""Commands that read workflow files and start nothing: ``validate`` and ``plan``. They load
the definition and plan layers only (no Celery), so checking files in CI or an editor is quick."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..core.errors import EXIT_INVALID
from ..definition.loader import load_workflow
from ..plan.compile import make_plan
from .workflowfiles import check_workflows, expand_workflow_paths


@click.command()
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


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
def plan(file: Path) -> None:
    """Print how a workflow is dispatched: its Celery canvas, or dynamic dispatch."""

    loaded = load_workflow(file)
    click.echo(f"workflow {loaded.workflow.name}: {len(loaded.workflow.steps)} steps")
    click.echo(make_plan(loaded.graph, loaded.workflow).render())


COMMANDS: list[click.Command] = [validate, plan]
