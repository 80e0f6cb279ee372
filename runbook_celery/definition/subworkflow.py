"""Sub-workflows (``uses:``): what a using step may say, the checks across files, and freezing.

A step with ``uses: other.yaml`` runs that workflow as a child run (GitHub's reusable
workflows, Dagu's ``call:``); ``with:`` gives its params. The checks here refuse, with the
line of the ``uses:``, what would only fail at run time: a cycle of files (a uses b uses a),
nesting deeper than ``MAX_DEPTH``, a ``with:`` that names no param of the child, misses a
required one or gives a literal that does not fit its type.

Freezing: when the top run is triggered, every file its tree of ``uses:`` reaches is read
once (YAML text and the scripts it names) into the snapshot's ``subworkflows`` bundle, so
editing or deleting those files mid-run changes nothing. A child's snapshot is built from
the bundle when its step starts (``childruns.py``), with ``with:`` values evaluated then.

Files are named by the functions that read them, passed in (``load``, ``load_text``), so
this module stays below the loader.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.errors import InvalidDefinition, Problem
from .model import Param, Workflow, param_value_problem
from .safefiles import Refused, read_script
from .stepmodel import Step
from .yamlload import YamlPath, format_path

if TYPE_CHECKING:
    from .loader import LoadedWorkflow

MAX_DEPTH = 5  # levels of child runs below a triggered run (documented in the reference)

# Keys a using step may not have, with the reason shown. Everything a child does is said in
# its own file; the using step only decides when it runs (needs, if:, approval) and whether
# its failure stops the parent (continue_on_error).
EXCLUSIVE: dict[str, str] = {
    "run": "the child workflow's steps are what runs",
    "script": "the child workflow's steps are what runs",
    "shell": "the child workflow's steps choose their shell",
    "env": "pass values as params with with:",
    "working_dir": "the child workflow's steps choose their directory",
    "output": "the step's outputs are the child workflow's outputs:",
    "skip_on_exit_codes": "a child run has no exit code",
    "matrix": "one step runs one child run",
    "for_each": "one step runs one child run",
    "max_parallel": "one step runs one child run",
    "retries": "a child run is not retried; give its steps retries",
    "timeout": "give the child workflow a timeout:",
    "kill_grace": "the child workflow's steps are what is killed",
    "on_failure": "a failed child run fails the step (continue_on_error lets the run go on)",
}

# Files being validated, outermost first: a cycle of uses: is a file already in here.
_LOADING: ContextVar[tuple[str, ...]] = ContextVar("runbook_uses_loading", default=())


class AddProblem(Protocol):
    def __call__(self, path: YamlPath, message: str, step: str | None = None) -> None: ...


def step_problems(index: int, step: Step, add: AddProblem) -> None:
    """The using step's own keys: ``uses`` excludes what a Bash step says; ``with`` needs it."""
    if step.uses is None:
        if step.with_ is not None:
            add(
                ("steps", index, "with"),
                "with: gives params to the workflow of uses:, and this step has no uses:",
                step.id,
            )
        return
    given = step.model_dump(exclude_defaults=True, exclude_unset=True, by_alias=False)
    for key, why in EXCLUSIVE.items():
        if key in given:
            add(("steps", index, key), f"a step with uses: has no {key} ({why})", step.id)
    if isinstance(step.continue_on_error, list):
        add(
            ("steps", index, "continue_on_error"),
            "a child run has no exit code: write continue_on_error: true",
            step.id,
        )


def uses_target(uses: str, base_dir: Path) -> str:
    """Where ``uses:`` leads, symlinks resolved: the identity of a file in cycle checks."""
    path = Path(uses)
    return os.path.realpath(path if path.is_absolute() else base_dir / path)


def display_name(uses: str, using_file: str) -> str:
    """The used file as messages name it: next to the file that uses it."""
    if Path(uses).is_absolute() or using_file.startswith("<"):
        return uses
    return os.path.join(os.path.dirname(using_file), uses)


@contextmanager
def _loading(file: str) -> Iterator[tuple[str, ...]]:
    stack = (*_LOADING.get(), file)
    token = _LOADING.set(stack)
    try:
        yield stack
    finally:
        _LOADING.reset(token)


def uses_problems(
    loaded: LoadedWorkflow, load: Callable[[str], LoadedWorkflow], max_bytes: int
) -> list[Problem]:
    """Checks across files for each ``uses:`` of ``loaded``: the file can be read (as a
    ``script:`` is: inside the folder, or an absolute path), is a valid workflow, is not
    part of a cycle, is nested at most ``MAX_DEPTH`` deep, and takes the ``with:`` given."""
    problems: list[Problem] = []
    me = loaded.file if loaded.file.startswith("<") else os.path.realpath(loaded.file)
    with _loading(me) as stack:
        for i, step in enumerate(loaded.workflow.steps):
            if step.uses is None:
                continue
            where = _Where(loaded, i)
            target = uses_target(step.uses, loaded.base_dir)
            if target in stack:
                chain = [*stack[stack.index(target) :], target]
                problems.append(
                    where.problem(
                        f"uses: cycle {_chain(chain)}; a workflow may "
                        "not use itself, directly or through others"
                    )
                )
                continue
            if len(stack) > MAX_DEPTH:
                problems.append(
                    where.problem(
                        f"uses: nests deeper than {MAX_DEPTH} levels ({_chain([*stack, target])}); "
                        "move steps of the deepest workflows into the ones that use them"
                    )
                )
                continue
            try:
                read_script(step.uses, loaded.base_dir, max_bytes=max_bytes)
            except Refused as exc:
                problems.append(where.problem(f"uses {step.uses!r}: {exc}"))
                continue
            try:
                child = load(display_name(step.uses, loaded.file))
            except InvalidDefinition as exc:
                problems.append(where.problem(f"uses {step.uses!r}: that workflow is invalid"))
                problems += exc.problems
                continue
            problems += with_problems(where, step, child.workflow)
    return problems


def with_problems(where: _Where, step: Step, child: Workflow) -> list[Problem]:
    """``with:`` against the child's params: known names, required ones given, and
    literal values of the declared type (values with ``${{ }}`` are checked at run time)."""
    given = step.with_ or {}
    out: list[Problem] = []
    declared = {k: v if isinstance(v, Param) else Param(default=v) for k, v in child.params.items()}
    for name, value in given.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            out.append(
                where.problem(
                    f"{name!r} is not a param of {child.name} (its params: {known})", ("with", name)
                )
            )
        elif not (isinstance(value, str) and "${{" in value):
            why = param_value_problem(declared[name], value)
            if why is not None:
                kind = declared[name].type
                out.append(where.problem(f"param {name!r} (type: {kind}) {why}", ("with", name)))
    for name, param in declared.items():
        if param.required and name not in given:
            out.append(where.problem(f"{child.name} requires param {name!r}: give it under with:"))
    return out


@dataclass(frozen=True)
class _Where:
    """The using step, for problems at its line."""

    loaded: LoadedWorkflow
    index: int

    def problem(self, message: str, below: tuple[str, ...] = ("uses",)) -> Problem:
        path: YamlPath = ("steps", self.index, *below)
        source = self.loaded.source
        line = source.line_of(path) if source is not None else None
        step_id = self.loaded.workflow.steps[self.index].id
        return Problem(self.loaded.file, line, message, format_path(path), step_id)


def _chain(files: list[str]) -> str:
    return " -> ".join(os.path.basename(f) for f in files)


# ---------------------------------------------------------------------------- child runs

_CHILD_IDS = uuid.UUID("5b1e4a2c-57c8-4d43-9a43-4f1f0c1d2e7a")


def child_run_id(parent_run: str, step_id: str) -> str:
    """The id of the child run of step ``step_id`` of ``parent_run``: derived, not drawn, so
    a step delivered again (its worker died after recording the child) finds the same
    child instead of starting a second one. A rerun is a new parent, so a new child."""
    return uuid.uuid5(_CHILD_IDS, f"{parent_run}|{step_id}").hex


def child_ids(snapshot: Mapping[str, Any], run_id: str) -> dict[str, str]:
    """Each ``uses:`` step of a run with the id its child run has (or will have)."""
    return {s["id"]: child_run_id(run_id, s["id"]) for s in snapshot["steps"] if s.get("uses")}


# ---------------------------------------------------------------------------- freezing


@dataclass(frozen=True)
class Frozen:
    """A used workflow as its top run froze it: the bundle of every file the tree reaches,
    and which entry this workflow is. Scripts and further ``uses:`` are read from it."""

    bundle: Mapping[str, Any]
    key: str

    @property
    def entry(self) -> Mapping[str, Any]:
        entry: Mapping[str, Any] = self.bundle[self.key]
        return entry

    def script(self, name: str) -> str:
        text: str = self.entry["scripts"][name]
        return text


def freeze(
    loaded: LoadedWorkflow,
    snapshot: dict[str, Any],
    frozen: Frozen | None,
    load_text: Callable[..., LoadedWorkflow],
    max_bytes: int,
) -> dict[str, Any]:
    """Add ``uses``/``with`` to the snapshot's using steps and the ``subworkflows`` bundle.

    At the top run's trigger (``frozen`` None) every used file is read now; a child's
    snapshot takes its bundle from its parent, so the whole tree runs what was triggered.
    """
    steps = loaded.workflow.steps
    if frozen is None and not any(s.uses for s in steps):
        return snapshot
    if frozen is None:
        bundle: dict[str, Any] = {}
        top = loaded.file if loaded.file.startswith("<") else os.path.realpath(loaded.file)
        keys = _collect(loaded, bundle, load_text, max_bytes, (top,))
    else:
        bundle = dict(frozen.bundle)
        keys = dict(frozen.entry["uses"])
    for spec, step in zip(snapshot["steps"], steps, strict=True):
        if step.uses is not None:
            spec["uses"] = keys[step.uses]
            spec["with"] = dict(step.with_ or {})
    snapshot["subworkflows"] = bundle
    return snapshot


def _collect(
    loaded: LoadedWorkflow,
    bundle: dict[str, Any],
    load_text: Callable[..., LoadedWorkflow],
    max_bytes: int,
    stack: tuple[str, ...],
) -> dict[str, str]:
    """Read every file ``loaded`` uses into ``bundle`` (recursively); returns each
    ``uses:`` text's bundle key. Files may have changed since validation: what is read is
    validated again, and a cycle or depth found now is refused here too."""
    keys: dict[str, str] = {}
    for i, step in enumerate(loaded.workflow.steps):
        if step.uses is None or step.uses in keys:
            continue
        where = _Where(loaded, i)
        key = uses_target(step.uses, loaded.base_dir)
        keys[step.uses] = key
        if key in stack:
            raise InvalidDefinition([where.problem(f"uses: cycle {_chain([*stack, key])}")])
        if len(stack) > MAX_DEPTH:
            raise InvalidDefinition([where.problem(f"uses: nests deeper than {MAX_DEPTH} levels")])
        if key in bundle:
            continue
        try:
            text = read_script(step.uses, loaded.base_dir, max_bytes=max_bytes)
        except Refused as exc:
            raise InvalidDefinition([where.problem(f"uses {step.uses!r}: {exc}")]) from None
        name = display_name(step.uses, loaded.file)
        child = load_text(text, file=name, base_dir=Path(key).parent)
        entry: dict[str, Any] = {"file": name, "base_dir": str(Path(key).parent), "yaml": text}
        bundle[key] = entry
        entry["scripts"] = _scripts(child, max_bytes)
        entry["uses"] = _collect(child, bundle, load_text, max_bytes, (*stack, key))
    return keys


def _scripts(loaded: LoadedWorkflow, max_bytes: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, step in enumerate(loaded.workflow.steps):
        if step.script is not None and step.script not in out:
            try:
                out[step.script] = read_script(step.script, loaded.base_dir, max_bytes=max_bytes)
            except Refused as exc:
                problem = _Where(loaded, i).problem(f"script {step.script!r}: {exc}", ("script",))
                raise InvalidDefinition([problem]) from None
    return out
