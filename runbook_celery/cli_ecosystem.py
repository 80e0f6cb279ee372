"""Fitting into editors and CI: the definition format's JSON Schema and finding definition files.

Registered by ``cli.py`` through ``COMMANDS``. The schema is generated from the pydantic
models in ``model.py``; a copy is shipped as ``runbook_celery/schema.json`` so editors can
point at it (``# yaml-language-server: $schema=...``) and a test keeps that copy current.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .cli_deadletters import dead_letters
from .errors import InvalidDefinition, Problem
from .lint import lint_workflow
from .model import Workflow

# Draft 7 rather than pydantic's 2020-12: the YAML language server (VS Code, Neovim) validates
# with draft 7 and warns on later dialects; the generated schema uses no keyword newer than 7.
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_ID = "urn:runbook-celery:workflow"
SCHEMA_TITLE = "runbook-celery workflow"
SCHEMA_FILE = Path(__file__).with_name("schema.json")
WORKFLOW_SUFFIXES = (".yaml", ".yml")


def workflow_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file, as the models define it (aliases such as ``if``)."""
    generated = Workflow.model_json_schema(by_alias=True)
    generated.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": SCHEMA_TITLE, **generated}


def schema_text() -> str:
    """The schema exactly as committed in ``schema.json`` (stable order, trailing newline)."""
    return json.dumps(workflow_schema(), indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class Expansion:
    """What command-line arguments name, in their order: files, or why an argument named none."""

    items: list[Path | Problem]
    expanded: bool  # a directory or a pattern was given, so the file count is news to the user


def _workflow_files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in WORKFLOW_SUFFIXES and p.is_file())


def expand_workflow_paths(args: Iterable[Path | str]) -> Expansion:
    """Files as given; directories as their ``*.yaml``/``*.yml``; quoted globs (``**`` too).

    An argument that exists is never treated as a pattern, and one that neither exists nor
    contains ``*``, ``?`` or ``[`` is passed on unchanged so loading reports it as missing.
    A file named twice is checked once.
    """
    items: list[Path | Problem] = []
    expanded = False
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            expanded = True
            found = _workflow_files_in(path)
            items.extend(found)
            if not found:
                message = "no workflow files (*.yaml, *.yml) in this directory"
                items.append(Problem(str(path), None, message))
        elif not path.exists() and glob.has_magic(str(arg)):
            expanded = True
            matches = [Path(m) for m in sorted(glob.glob(str(arg), recursive=True))]
            for match in matches:
                items.extend(_workflow_files_in(match) if match.is_dir() else [match])
            if not matches:
                items.append(Problem(str(arg), None, "no files match this pattern"))
        else:
            items.append(path)
    return Expansion(list(dict.fromkeys(items)), expanded)


def check_workflows(
    items: Iterable[Path | Problem], lint: bool = False
) -> Iterator[tuple[str, list[Problem]]]:
    """Each file (or argument that named none) with its problems, none if valid; lazily.

    With ``lint``, a valid file's Bash is also run through shellcheck (``lint.py``).
    """
    from .loader import load_workflow

    for item in items:
        if isinstance(item, Problem):
            yield item.file, [item]
            continue
        try:
            loaded = load_workflow(item)
        except InvalidDefinition as exc:
            yield str(item), list(exc.problems)
        else:
            yield str(item), lint_workflow(loaded) if lint else []


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
    from .app import app
    from .schedule import scheduler_for

    app.Beat(scheduler=scheduler_for(definitions.resolve()), loglevel=loglevel).run()


COMMANDS = [schema, beat, dead_letters]  # dead-letters: registered here to keep cli.py as is
