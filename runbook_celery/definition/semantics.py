"""The checks of a workflow that pydantic cannot express: unique ids, known ``needs``, no
cycle, expressions and what they reference, where a value may go in Bash (``bashplace``),
``if:``, ``matrix``/``for_each``, ``working_dir`` and ``notify:`` secrets."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Protocol

from ..core.errors import Problem
from ..core.settings import get_settings
from . import bashplace, matrix, shells, subworkflow
from . import expressions as ex
from .graph import Graph, find_cycle
from .model import Workflow
from .notifyconfig import rule_problems
from .stepmodel import Step
from .stepvalues import is_numeric, matrix_text, numeric_refs, step_shell
from .yamlload import LoadedYaml, YamlPath, format_path


class AddProblem(Protocol):
    """Records a problem at ``path`` (``offset``: where in the string value there it is)."""

    def __call__(
        self, path: YamlPath, message: str, step: str | None = None, offset: int | None = None
    ) -> None: ...


def _adder(doc: LoadedYaml, problems: list[Problem]) -> AddProblem:
    """``add``: appends a problem to ``problems`` at its line in ``doc``."""

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

    return add


def check_semantics(wf: Workflow, doc: LoadedYaml) -> list[Problem]:
    """Graph and expression checks that pydantic cannot express."""
    problems: list[Problem] = []
    add = _adder(doc, problems)
    _check_ids_and_needs(wf, add)
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
        _check_step_text(i, step, wf, graph, add)
        subworkflow.step_problems(i, step, add)
        _check_step_control(i, step, wf, graph, add)
    return problems


def _check_ids_and_needs(wf: Workflow, add: AddProblem) -> None:
    """Unique step ids, run or script, and ``needs`` naming other steps, each once."""
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


def _check_step_text(i: int, step: Step, wf: Workflow, graph: Graph, add: AddProblem) -> None:
    """A step's shell, and the expressions of its run, env and with."""
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


def notify_problems(wf: Workflow, doc: LoadedYaml) -> list[Problem]:
    """``notify:`` URLs may only use secrets that ``secrets:`` lists (notifyconfig)."""
    rules = [(n.on, n.urls) for n in wf.notify]
    return [
        Problem(doc.file, doc.line_of(path), message, format_path(path))
        for path, message in rule_problems(rules, wf.secrets)
    ]


def _check_step_control(i: int, step: Step, wf: Workflow, graph: Graph, add: AddProblem) -> None:
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


def _check_outputs(wf: Workflow, graph: Graph, add: AddProblem) -> None:
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


def _check_text(
    text: str, path: YamlPath, step: Step | None, wf: Workflow, graph: Graph, add: AddProblem
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
    add: AddProblem,
) -> None:
    """Each ``${{ }}`` of a run: must sit where Bash takes its value as data (bashplace)."""
    numeric = numeric_refs(wf, step)
    exprs = [
        bashplace.Expr(o.start, o.end, o.source, is_numeric(o.node, numeric)) for o in occurrences
    ]
    for site in bashplace.place(text, exprs):
        if site.refusal is not None:
            add(path, site.message(), step.id if step else None, site.expr.start)


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
