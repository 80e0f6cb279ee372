"""From a YAML file to a validated Workflow, collecting every problem with its line."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..core.errors import DefinitionError, InvalidDefinition, Problem
from ..core.settings import get_settings
from . import subworkflow
from .cron import schedule_problem
from .graph import Graph
from .model import Workflow
from .modelerrors import pydantic_problems
from .safefiles import Refused, read_bytes, read_script
from .semantics import check_semantics, notify_problems, path_problems
from .yamlload import LoadedYaml, load_yaml_bytes, load_yaml_text

__all__ = [
    "LoadedWorkflow",
    "from_mapping",
    "from_model",
    "load_workflow",
    "load_workflow_text",
    "script_problem",
]


@dataclass(frozen=True)
class LoadedWorkflow:
    """A valid workflow with where it came from (scripts and working dirs resolve from there)."""

    workflow: Workflow
    file: str
    base_dir: Path
    graph: Graph
    source: LoadedYaml | None = field(default=None, compare=False, repr=False)  # lines


# Validated workflows by (file name, folder, content hash, settings that validation reads):
# submit() of the same file again skips parsing and validation, which cost about twice as
# much as freezing the snapshot. Scripts are checked on every load (they are separate files).
_CACHE: OrderedDict[tuple[str, str, str, int, int], LoadedWorkflow] = OrderedDict()
_CACHE_SIZE = 128


def load_workflow(path: str | Path) -> LoadedWorkflow:
    """Load and validate one workflow file. Raises InvalidDefinition listing every problem."""
    settings = get_settings()
    base_dir = Path(path).resolve().parent
    try:
        if Path(path).is_dir():
            raise DefinitionError("is a directory, not a workflow file", file=str(path))
        raw = read_bytes(path, max_bytes=settings.max_file_bytes, within=None)
    except Refused as exc:
        raise InvalidDefinition([DefinitionError(str(exc), file=str(path)).problem]) from None
    except DefinitionError as exc:
        raise InvalidDefinition([exc.problem]) from None
    key = (
        str(path),
        str(base_dir),
        hashlib.sha256(raw).hexdigest(),
        settings.max_file_bytes,
        settings.max_instances,
    )
    loaded = _CACHE.get(key)
    if loaded is None:
        try:
            doc = load_yaml_bytes(raw, file=str(path), max_bytes=settings.max_file_bytes)
        except DefinitionError as exc:
            raise InvalidDefinition([exc.problem]) from None
        loaded = _validate(doc, base_dir)
    if problems := _file_problems(loaded, settings.max_file_bytes):
        raise InvalidDefinition(problems)
    _CACHE[key] = loaded
    _CACHE.move_to_end(key)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return loaded


def _file_problems(loaded: LoadedWorkflow, max_bytes: int) -> list[Problem]:
    """What the files a definition names say (checked on every load: they are separate
    files): its scripts, and the workflows its ``uses:`` run (``subworkflow``)."""
    problems = _script_problems(loaded, max_bytes)
    return problems + subworkflow.uses_problems(loaded, load_workflow, max_bytes)


def _script_problems(loaded: LoadedWorkflow, max_bytes: int) -> list[Problem]:
    """Each ``script:`` must be a file the definition may read (``safefiles``)."""
    problems = []
    for i, step in enumerate(loaded.workflow.steps):
        if step.script is None:
            continue
        try:
            read_script(step.script, loaded.base_dir, max_bytes=max_bytes)
        except Refused as exc:
            problems.append(script_problem(loaded, i, step.script, exc))
    return problems


def script_problem(loaded: LoadedWorkflow, index: int, script: str, exc: Refused) -> Problem:
    """A refused ``script:`` at its line in the workflow file."""
    where = f"{script}:{exc.line}" if exc.line else script
    line = loaded.source.line_of(("steps", index, "script")) if loaded.source else None
    return Problem(
        loaded.file,
        line,
        f"script {where!r}: {exc}",
        f"steps[{index}].script",
        loaded.workflow.steps[index].id,
    )


def load_workflow_text(
    text: str, *, file: str = "<string>", base_dir: Path | None = None
) -> LoadedWorkflow:
    """Validate a workflow given as YAML text (for tests and embedding)."""
    try:
        doc = load_yaml_text(text, file=file)
    except DefinitionError as exc:
        raise InvalidDefinition([exc.problem]) from None
    return _validate(doc, base_dir or Path.cwd())


def from_mapping(
    data: Mapping[str, Any], *, file: str = "<dict>", base_dir: Path | None = None
) -> LoadedWorkflow:
    """Validate a workflow given as a dict, exactly as its YAML would be: problems name the
    path in the dict (``steps[1].needs``) since there are no lines."""
    loaded = _validate(LoadedYaml(data=dict(data), file=file), base_dir or Path.cwd())
    if problems := _file_problems(loaded, get_settings().max_file_bytes):
        raise InvalidDefinition(problems)
    return loaded


def from_model(workflow: Workflow, *, base_dir: Path | None = None) -> LoadedWorkflow:
    """Validate a Workflow built in Python (graph and expression checks still apply)."""
    doc = LoadedYaml(data=workflow.model_dump(by_alias=True), file=f"<workflow {workflow.name}>")
    base_dir = base_dir or Path.cwd()
    problems = check_semantics(workflow, doc) + notify_problems(workflow, doc)
    problems += path_problems(workflow, doc, base_dir)
    if problems:
        raise InvalidDefinition(problems)
    return LoadedWorkflow(
        workflow, doc.file, base_dir, Graph({s.id: s.needs for s in workflow.steps})
    )


def _validate(doc: LoadedYaml, base_dir: Path) -> LoadedWorkflow:
    if not isinstance(doc.data, dict):
        kind = type(doc.data).__name__
        raise InvalidDefinition(
            [Problem(doc.file, doc.line_of(()), f"expected a mapping of workflow keys, got {kind}")]
        )
    try:
        workflow = Workflow.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidDefinition(pydantic_problems(exc, doc)) from None
    problems = check_semantics(workflow, doc) + notify_problems(workflow, doc)
    problems += path_problems(workflow, doc, base_dir)
    if found := schedule_problem(workflow.schedule, workflow.timezone):
        key, why = found
        problems.append(Problem(doc.file, doc.line_of((key,)), f"invalid {key}: {why}", key))
    if workflow.schedule is not None:
        for name in (n for n, p in workflow.params.items() if p.required):
            message = "beat triggers a scheduled workflow without params: give it a default"
            line = doc.line_of(("params", name))
            problems.append(Problem(doc.file, line, message, f"params.{name}"))
    if problems:
        raise InvalidDefinition(problems)
    graph = Graph({s.id: s.needs for s in workflow.steps})
    return LoadedWorkflow(workflow, doc.file, base_dir, graph, doc)
