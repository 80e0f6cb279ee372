"""From a YAML file to a validated Workflow, collecting every problem with its line."""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ..core.errors import DefinitionError, InvalidDefinition, Problem
from ..core.settings import get_settings
from . import bashplace, matrix, shells, subworkflow
from . import expressions as ex
from .cron import schedule_problem
from .fieldtypes import NUMBER_PATTERN
from .graph import Graph, find_cycle
from .model import Defaults, Notify, Param, Workflow
from .notifyconfig import rule_problems
from .safefiles import Refused, read_bytes, read_script
from .stepmodel import Retries, Step
from .yamlload import LoadedYaml, YamlPath, format_path, load_yaml_bytes, load_yaml_text


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
    problems = _check_semantics(workflow, doc) + _notify_problems(workflow, doc)
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
        raise InvalidDefinition(_pydantic_problems(exc, doc)) from None
    problems = _check_semantics(workflow, doc) + _notify_problems(workflow, doc)
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


def _step_id_at(doc: LoadedYaml, loc: tuple[Any, ...]) -> str | None:
    if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
        steps = doc.data.get("steps") if isinstance(doc.data, dict) else None
        if isinstance(steps, list) and loc[1] < len(steps) and isinstance(steps[loc[1]], dict):
            sid = steps[loc[1]].get("id")
            return sid if isinstance(sid, str) else None
    return None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """Keys allowed in the mapping that holds ``loc[-1]`` (for did-you-mean hints)."""
    parent = [p for p in loc[:-1] if not isinstance(p, int)]
    if len(parent) == 2 and parent[0] == "params":
        return list(Param.model_fields)
    model: Any = {
        (): Workflow,
        ("steps",): Step,
        ("defaults",): Defaults,
        ("steps", "retries"): Retries,
        ("defaults", "retries"): Retries,
        ("notify",): Notify,
    }.get(tuple(parent))
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


_UNION_TAGS = {"str", "int", "float", "bool"}


def _pydantic_problems(exc: ValidationError, doc: LoadedYaml) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function"))
        kind = err["type"]
        key_error = "[key]" in loc
        loc = tuple(p for p in loc if p != "[key]")
        scalar_union = loc[:1] == ("params",) and len(loc) == 3 and loc[-1] in _UNION_TAGS
        if scalar_union:
            loc = loc[:-1]
        path: YamlPath = loc
        if scalar_union:
            message = "must be a string, number or boolean"
            line = doc.line_of(loc)
        elif key_error:
            message = (
                f"{loc[-1]!r} is not a valid name: use letters, digits and '_', "
                "not starting with a digit"
            )
            line = doc.line_of(loc)
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            hint = difflib.get_close_matches(key, _known_keys(loc), n=1)
            message = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            path = loc[:-1]
            line = doc.line_of(loc)
        elif kind == "missing":
            message = f"missing required key {loc[-1]!r}"
            path = loc[:-1]
            line = doc.line_of(path)
        else:
            message = err["msg"]
            if kind == "string_pattern_mismatch" and loc and loc[-1] in ("id", "name"):
                message = (
                    "must start with a letter or '_' and contain only letters, digits, "
                    "'_' and '-' (at most 64 characters)"
                )
            elif "input" in err and kind.endswith("_type"):
                message += f" (got {type(err['input']).__name__})"
            line = doc.line_of(loc)
        if (format_path(path), message) in seen:
            continue
        seen.add((format_path(path), message))
        problems.append(Problem(doc.file, line, message, format_path(path), _step_id_at(doc, loc)))
    return problems


def _check_semantics(wf: Workflow, doc: LoadedYaml) -> list[Problem]:
    """Graph and expression checks that pydantic cannot express."""
    problems: list[Problem] = []

    def add(
        path: YamlPath, message: str, step: str | None = None, offset: int | None = None
    ) -> None:
        """``offset``: where in the string value at ``path`` the problem is (for its line)."""
        if offset is None:
            line = doc.line_of(path)
        else:
            value = _value_at(doc.data, path)
            line = doc.line_in(path, value, offset) if isinstance(value, str) else doc.line_of(path)
        problems.append(Problem(doc.file, line, message, format_path(path), step))

    seen: dict[str, int] = {}
    for i, step in enumerate(wf.steps):
        if step.id in seen:
            add(
                ("steps", i, "id"),
                f"duplicate step id {step.id!r} (first at steps[{seen[step.id]}])",
                step.id,
            )
        else:
            seen[step.id] = i
        if step.run is None and step.script is None and step.uses is None:
            add(("steps", i), f"step {step.id!r} needs either 'run' or 'script'", step.id)
        if step.run is not None and step.script is not None:
            add(("steps", i), f"step {step.id!r} has both 'run' and 'script'; keep one", step.id)
        for j, need in enumerate(step.needs):
            if need == step.id:
                add(("steps", i, "needs", j), f"step {step.id!r} needs itself", step.id)
            elif need not in seen and need not in {s.id for s in wf.steps}:
                hint = difflib.get_close_matches(need, wf.step_ids, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                add(("steps", i, "needs", j), f"unknown step {need!r}{extra}", step.id)
            if step.needs.index(need) != j:
                add(("steps", i, "needs", j), f"{need!r} is listed twice", step.id)
    if problems:
        return problems

    needs = {s.id: [n for n in s.needs if n != s.id] for s in wf.steps}
    cycle = find_cycle(needs)
    if cycle:
        first = wf.step_ids.index(cycle[0])
        add(
            ("steps", first, "needs"),
            "dependency cycle: " + " -> ".join(cycle) + " (each needs the next)",
            cycle[0],
        )
        return problems

    graph = Graph(needs)
    if wf.concurrency is not None:
        _check_text(wf.concurrency.group, ("concurrency", "group"), None, wf, graph, add)
    for key, value in wf.env.items():
        _check_text(value, ("env", key), None, wf, graph, add)
    _check_outputs(wf, graph, add)
    default_shell = wf.defaults.shell if wf.defaults is not None else None
    if default_shell is not None and (problem := shells.template_problem(default_shell)):
        add(("defaults", "shell"), problem, None)
    for i, step in enumerate(wf.steps):
        shell = step_shell(wf, step)
        if step.shell is not None and (problem := shells.template_problem(step.shell)):
            add(("steps", i, "shell"), problem, step.id)
        if step.run is not None and shell != shells.BASH and "${{" in step.run:
            add(
                ("steps", i, "run"),
                f"with shell {shell!r}, ${{{{ }}}} cannot be placed in run (only Bash's grammar "
                "is known); pass the value through env: (NAME: ${{ ... }}) and read the "
                "environment variable NAME in the script",
                step.id,
            )
        elif step.run is not None:
            _check_text(step.run, ("steps", i, "run"), step, wf, graph, add)
        for key, value in step.env.items():
            _check_text(value, ("steps", i, "env", key), step, wf, graph, add)
        for key, given in (step.with_ or {}).items():
            if isinstance(given, str):
                _check_text(given, ("steps", i, "with", key), step, wf, graph, add)
        subworkflow.step_problems(i, step, add)
        _check_step_control(i, step, wf, graph, add)
    return problems


def path_problems(wf: Workflow, doc: LoadedYaml, base_dir: Path) -> list[Problem]:
    """``working_dir`` stays in the workflow's folder (symlinks resolved) unless it is an
    absolute path, and takes no expression (``script:`` files: ``safefiles``)."""
    problems: list[Problem] = []
    folder = base_dir.resolve()
    for i, step in enumerate(wf.steps):
        if step.working_dir is not None:
            where = ("steps", i, "working_dir")
            why = working_dir_problem(step.working_dir, folder)
            if why is not None:
                problems.append(
                    Problem(doc.file, doc.line_of(where), why, format_path(where), step.id)
                )
    return problems


def working_dir_problem(working_dir: str, folder: Path) -> str | None:
    """Why ``working_dir`` cannot be used from a workflow in ``folder``, or None."""
    if "${{" in working_dir:
        return (
            f"working_dir {working_dir!r}: expressions (${{{{ }}}}) are not evaluated in "
            "working_dir; write a fixed path (cd in run: to choose one at run time)"
        )
    if Path(working_dir).is_absolute():
        return None  # stated explicitly: the definition takes it where it is
    target = (folder / working_dir).resolve()
    if target != folder and not target.is_relative_to(folder):
        return (
            f"working_dir {working_dir!r} leads out of the workflow's folder (to {target}); "
            "write a path inside the folder, or an absolute path"
        )
    return None


def _notify_problems(wf: Workflow, doc: LoadedYaml) -> list[Problem]:
    """``notify:`` URLs may only use secrets that ``secrets:`` lists (notifyconfig)."""
    rules = [(n.on, n.urls) for n in wf.notify]
    return [
        Problem(doc.file, doc.line_of(path), message, format_path(path))
        for path, message in rule_problems(rules, wf.secrets)
    ]


def _check_step_control(i: int, step: Step, wf: Workflow, graph: Graph, add: _AddProblem) -> None:
    """if:, matrix/for_each and max_parallel: what pydantic cannot check alone."""
    if step.if_ is not None:
        try:
            node = ex.parse_condition(step.if_)
        except ex.ExpressionError as exc:
            add(("steps", i, "if"), str(exc), step.id)
        else:
            for problem in reference_problems(node, step, wf, graph):
                add(("steps", i, "if"), f"{step.if_.strip()}: {problem}", step.id)
    if step.matrix is not None and step.for_each is not None:
        add(("steps", i), f"step {step.id!r} has both 'matrix' and 'for_each'; keep one", step.id)
    if step.max_parallel is not None and step.matrix is None and step.for_each is None:
        add(("steps", i, "max_parallel"), "max_parallel needs 'matrix' or 'for_each'", step.id)
    if step.matrix is not None:
        if not matrix.axes(step.matrix) and not step.matrix.get("include"):
            add(("steps", i, "matrix"), "matrix needs at least one key or an include", step.id)
        else:
            try:
                matrix.expand(matrix_text(step.matrix), get_settings().max_instances)
            except matrix.TooManyCombinations as exc:
                add(
                    ("steps", i, "matrix"),
                    f"{exc}, more than the {exc.cap:,} instances a step may have "
                    "(RUNBOOK_MAX_INSTANCES; the cross product counts before exclude); split "
                    "it into several steps or shorten the value lists",
                    step.id,
                )
    if step.for_each is not None:
        text = step.for_each.strip()
        try:
            occ = ex.find(text)
        except ex.ExpressionError as exc:
            add(("steps", i, "for_each"), str(exc), step.id)
            return
        whole = len(occ) == 1 and occ[0].start == 0 and occ[0].end == len(text)
        if not whole or ex.calls(occ[0].node):
            add(
                ("steps", i, "for_each"),
                "for_each must be one expression like ${{ steps.ID.outputs.KEY }} or "
                "${{ fromJSON(params.LIST) }} giving a list (or JSON text of one)",
                step.id,
            )
            return
        for problem in reference_problems(occ[0].node, step, wf, graph):
            add(("steps", i, "for_each"), problem, step.id)


def step_shell(wf: Workflow, step: Step) -> str:
    """The interpreter of a step: its own ``shell``, the workflow's default, else bash."""
    if step.shell is not None:
        return step.shell
    if wf.defaults is not None and wf.defaults.shell is not None:
        return wf.defaults.shell
    return shells.BASH


def _check_outputs(wf: Workflow, graph: Graph, add: _AddProblem) -> None:
    """Workflow ``outputs:``: expressions over params, steps' outputs and statuses (any
    step: they are read once the run has ended)."""
    for name, text in wf.outputs.items():
        path: YamlPath = ("outputs", name)
        try:
            occurrences = ex.find(text)
        except ex.ExpressionError as exc:
            add(path, str(exc), None)
            continue
        for occ in occurrences:
            if ex.calls(occ.node):
                add(path, f"${{{{ {occ.source} }}}}: status functions belong in 'if:' only", None)
            for ref in ex.refs(occ.node):
                if ref.kind == "params" and ref.name not in wf.params:
                    add(path, f"${{{{ {occ.source} }}}}: unknown param {ref.name!r}", None)
                elif (
                    ref.kind in ("outputs", "all_outputs", "status") and ref.name not in graph.needs
                ):
                    add(path, f"${{{{ {occ.source} }}}}: unknown step {ref.name!r}", None)
                elif ref.kind in ("matrix", "item", "needs"):
                    add(
                        path,
                        f"${{{{ {occ.source} }}}}: workflow outputs read params, "
                        "steps.ID.outputs, steps.ID.status and run.status",
                        None,
                    )


class _AddProblem(Protocol):
    """``add`` of ``_check_semantics``: records a problem at ``path``."""

    def __call__(
        self, path: YamlPath, message: str, step: str | None = None, offset: int | None = None
    ) -> None: ...


def _check_text(
    text: str, path: YamlPath, step: Step | None, wf: Workflow, graph: Graph, add: _AddProblem
) -> None:
    sid = step.id if step else None
    try:
        occurrences = ex.find(text)
    except ex.ExpressionError as exc:
        add(path, str(exc), sid)
        return
    valid = True
    for occ in occurrences:
        if ex.calls(occ.node):
            add(path, f"${{{{ {occ.source} }}}}: status functions belong in 'if:' only", sid)
            valid = False
            continue
        for problem in reference_problems(occ.node, step, wf, graph):
            add(path, f"${{{{ {occ.source} }}}}: {problem}", sid)
            valid = False
    if valid and occurrences and path[-1] == "run":
        _check_placement(text, occurrences, path, step, wf, add)


def _check_placement(
    text: str,
    occurrences: list[ex.Occurrence],
    path: YamlPath,
    step: Step | None,
    wf: Workflow,
    add: _AddProblem,
) -> None:
    """Each ``${{ }}`` of a run: must sit where Bash takes its value as data (bashplace)."""
    numeric = numeric_refs(wf, step)
    exprs = [
        bashplace.Expr(o.start, o.end, o.source, _is_numeric(o.node, numeric)) for o in occurrences
    ]
    for site in bashplace.place(text, exprs):
        if site.refusal is not None:
            add(path, site.message(), step.id if step else None, site.expr.start)


def _is_numeric(node: ex.Node, numeric: frozenset[str]) -> bool:
    """An expression Bash arithmetic may use: a single reference that is always a number."""
    return isinstance(node, ex.Ref) and node.text() in numeric


def numeric_refs(wf: Workflow, step: Step | None) -> frozenset[str]:
    """References whose value is always a decimal number, so Bash arithmetic may use them:
    params of type number (checked at trigger) and matrix keys whose every value is one."""
    out = {f"params.{name}" for name, param in wf.params.items() if param.type == "number"}
    if step is not None and step.matrix:
        try:
            combos = matrix.expand(matrix_text(step.matrix), get_settings().max_instances)
        except matrix.TooManyCombinations:
            combos = []
        for key in matrix.keys(step.matrix):
            if combos and all(key in c and _is_number(c[key]) for c in combos):
                out.add(f"matrix.{key}")
    return frozenset(out)


def matrix_text(declared: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A matrix with each scalar as the text a step sees (as env values are), objects kept
    as objects of text: validation and the worker expand and compare the same values."""
    return {k: [_value_text(v) for v in vs] for k, vs in declared.items()}


def _value_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _value_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_value_text(v) for v in value]
    return ex.to_text(value)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and bool(re.fullmatch(NUMBER_PATTERN, ex.to_text(value)))


def _value_at(data: Any, path: YamlPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def reference_problems(node: ex.Node, step: Step | None, wf: Workflow, graph: Graph) -> list[str]:
    """What is wrong with the references of one expression used by ``step``."""
    out: list[str] = []
    for ref in ex.refs(node):
        if ref.kind == "params" and ref.name not in wf.params:
            known = ", ".join(sorted(wf.params)) or "none defined"
            out.append(f"unknown param {ref.name!r} (params: {known})")
        elif ref.kind in ("run_status", "needs") and step is None:
            out.append(f"workflow-level env may use params only, not {ref.text()}")
        elif ref.kind in ("outputs", "all_outputs", "status"):
            if step is None:
                out.append("workflow-level env may use params only, not step outputs")
            elif ref.name not in graph.needs:
                out.append(f"unknown step {ref.name!r}")
            elif ref.name not in graph.ancestors(step.id):
                out.append(
                    f"step {step.id!r} does not need {ref.name!r}; add it to 'needs' "
                    "(directly or through a step it needs)"
                )
        elif ref.kind == "matrix":
            if step is None or step.matrix is None:
                out.append(f"'{ref.text()}' is only available in a step with matrix")
            elif ref.name not in (keys := matrix.keys(step.matrix)):
                out.append(f"unknown matrix key {ref.name!r} (keys: {', '.join(keys)})")
        elif ref.kind == "item" and (step is None or step.for_each is None):
            out.append("'item' is only available in a step with for_each")
    return out
