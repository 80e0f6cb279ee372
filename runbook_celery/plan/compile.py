"""Workflow -> run snapshot -> execution plan. Pure: no Celery objects, no Redis.

The snapshot is everything a run needs, frozen at trigger time (commands, script contents,
params); the plan says how the DAG is dispatched: as one Celery canvas when its order is
series-parallel, or by exact dynamic dispatch (a Redis join per step) when it is not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from ..core.errors import DefinitionError, InvalidDefinition, InvalidParams
from ..core.settings import get_settings
from ..definition import bashplace, shells, subworkflow
from ..definition import expressions as ex
from ..definition.fieldtypes import Scalar
from ..definition.graph import Graph, Leaf, Series, SPTree
from ..definition.loader import LoadedWorkflow, load_workflow_text, script_problem
from ..definition.model import Param, param_text, param_value_problem
from ..definition.safefiles import Refused, read_script
from ..definition.stepvalues import matrix_text, numeric_refs, step_shell
from .bashtext import rewrite_command, substitute_text
from .canvasplan import StepShape, dynamic_only, handoffs, step_notes
from .snapshotversion import SNAPSHOT_VERSION

CANVAS = "canvas"
DYNAMIC = "dynamic"


# ---------------------------------------------------------------- snapshot


def resolve_params(
    declared: Mapping[str, Param | Scalar], given: Mapping[str, Any] | None
) -> dict[str, str]:
    """Each param's text: the trigger's value checked against its declaration, else the default.

    Unknown names, non-scalars, values that do not fit the param's type and missing required
    params are errors, all reported at once; a ``type: number`` value is a finite decimal
    before any step sees it.
    """
    params = {k: v if isinstance(v, Param) else Param(default=v) for k, v in declared.items()}
    given = dict(given or {})
    out: dict[str, str] = {}
    problems: list[str] = []
    for key in given:
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            problems.append(f"unknown param {key!r} (this workflow declares: {known})")
    for key, param in params.items():
        if key not in given:
            if param.required:
                problems.append(f"param {key!r} is required: give it (-p {key}=VALUE)")
            else:
                out[key] = _default_text(param)
            continue
        value = given[key]
        if value is None or not isinstance(value, str | int | float | bool):
            problems.append(f"param {key!r} must be a string, number or boolean")
        elif isinstance(value, str) and "\x00" in value:
            problems.append(f"param {key!r} contains a NUL byte")
        elif (why := param_value_problem(param, value)) is not None:
            problems.append(f"param {key!r} (type: {param.type}) {why}")
        else:
            out[key] = param_text(param, value) or ""
    if problems:
        raise InvalidParams("; ".join(problems))
    return out


def _default_text(param: Param) -> str:
    if param.default is None:
        return "false" if param.type == "boolean" else ""
    return param_text(param, param.default) or ex.to_text(param.default)


def build_snapshot(
    loaded: LoadedWorkflow,
    params: Mapping[str, Any] | None = None,
    *,
    frozen: subworkflow.Frozen | None = None,
) -> dict[str, Any]:
    """Freeze a workflow for one run: commands, script contents, params, plan mode, and
    the workflows its ``uses:`` run. ``frozen``: a child run's workflow, whose scripts and
    used files come from its parent's snapshot, not from disk.

    The result is the stored (wire) form, read back by ``plan/snapshot.py``."""
    wf = loaded.workflow
    values = resolve_params(wf.params, params)

    def param_only(ref: ex.Ref) -> str:
        return values[ref.name]

    steps = [_step_spec(loaded, i, frozen) for i in range(len(wf.steps))]
    mode, reason = choose_mode(loaded.workflow, loaded.graph)
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "workflow": wf.name,
        "description": wf.description,
        "file": loaded.file,
        "base_dir": str(loaded.base_dir),
        "params": values,
        "env": {k: substitute_text(v, param_only) for k, v in wf.env.items()},
        "workflow_outputs": dict(wf.outputs),
        "steps": steps,
        "order": loaded.graph.topological(),
        "mode": mode,
        "mode_reason": reason,
        "timeout": wf.timeout,
        "max_active_steps": wf.max_active_steps,
        "secrets": list(wf.secrets),
        # URLs as written: their ${{ secrets.NAME }} are resolved only where they are sent
        "notify": [{"on": [str(e) for e in n.on], "urls": list(n.urls)} for n in wf.notify],
        "concurrency": {
            "group": substitute_text(wf.concurrency.group, param_only),
            "limit": wf.concurrency.limit,
            "on_conflict": wf.concurrency.on_conflict,
        }
        if wf.concurrency
        else None,
    }
    max_bytes = get_settings().max_file_bytes
    return subworkflow.freeze(loaded, snapshot, frozen, load_workflow_text, max_bytes)


def _step_spec(
    loaded: LoadedWorkflow, index: int, frozen: subworkflow.Frozen | None
) -> dict[str, Any]:
    """One step as frozen for the run, the workflow's ``defaults`` applied."""
    wf = loaded.workflow
    step, defaults = wf.steps[index], wf.defaults
    retries = step.retries or (defaults.retries if defaults else None)
    vars_: dict[str, str] = {}
    command, shell_script = _step_command(loaded, index, frozen, vars_)
    working_dir = None
    if step.working_dir:
        working_dir = str((loaded.base_dir / step.working_dir).resolve())
    return {
        "id": step.id,
        "name": step.name or step.id,
        "needs": list(step.needs),
        "command": command,
        "shell_script": shell_script,
        "env": dict(step.env),
        "vars": vars_,
        "working_dir": working_dir,
        "retries": retries.model_dump() if retries else None,
        "timeout": step.timeout or (defaults.timeout if defaults else None),
        "kill_grace": _first(step.kill_grace, defaults.kill_grace if defaults else None),
        "continue_on_error": step.continue_on_error,
        "skip_on_exit_codes": step.skip_on_exit_codes,
        "output": step.output,
        "if": step.if_.strip() if step.if_ else None,
        "matrix": matrix_text(step.matrix) if step.matrix else None,
        "for_each": step.for_each.strip() if step.for_each else None,
        "max_parallel": step.max_parallel,
        "queue": step.queue,
        "approval": step.approval.model_dump() if step.approval else None,
        "on_failure": step.on_failure or (defaults.on_failure if defaults else None),
        "priority": step.priority if step.priority is not None else wf.priority,
    }


def _step_command(
    loaded: LoadedWorkflow, index: int, frozen: subworkflow.Frozen | None, vars_: dict[str, str]
) -> tuple[str, str | None]:
    """(what Bash runs, the script text another shell is given, if any). A Bash ``run:``
    has its ``${{ }}`` placed as variables (into ``vars_``); a script is read now."""
    wf = loaded.workflow
    step = wf.steps[index]
    if step.script is not None and frozen is not None:
        command = frozen.script(step.script)
    elif step.script is not None:
        command = _read_script(loaded, index, step.script)
    elif step_shell(wf, step) != shells.BASH:
        command = step.run or ""  # validation refused ${{ }} in it
    else:
        command = _rewrite_step(loaded, index, vars_)
    shell = step_shell(wf, step)
    if shell != shells.BASH:  # Bash starts the interpreter on the text
        return shells.launcher(shell), command
    return command, None


def _rewrite_step(loaded: LoadedWorkflow, index: int, vars_out: dict[str, str]) -> str:
    """A step's run: text with references placed; a refusal is a definition error.

    Loading already refuses these with file and line; this covers a LoadedWorkflow built
    some other way.
    """
    step = loaded.workflow.steps[index]
    try:
        return rewrite_command(step.run or "", vars_out, numeric_refs(loaded.workflow, step))
    except bashplace.Unplaceable as exc:
        raise InvalidDefinition(
            [
                DefinitionError(
                    site.message(), file=loaded.file, path=f"steps[{index}].run", step_id=step.id
                ).problem
                for site in exc.sites
            ]
        ) from None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def choose_mode(wf: Any, graph: Graph) -> tuple[str, str]:
    """Canvas when it mirrors the DAG (every step's extras run exactly in it, see
    ``canvasplan``); else dynamic."""
    return _mode(graph, [StepShape.of_step(s) for s in wf.steps])


def _mode(graph: Graph, shapes: list[StepShape]) -> tuple[str, str]:
    if graph.series_parallel() is None:
        return DYNAMIC, "the DAG is not series-parallel"
    if only := dynamic_only(shapes):
        return DYNAMIC, only[0]
    if handoffs(shapes):
        return CANVAS, (
            "the DAG is series-parallel; at a failure or a cancel the run continues by "
            "dynamic dispatch (steps run after a failure)"
        )
    return CANVAS, "the DAG is series-parallel"


def _read_script(loaded: LoadedWorkflow, index: int, script: str) -> str:
    """The script's text, read as ``safefiles`` allows (the loader checked it already;
    reading again here freezes what the run executes, refused the same way if it changed)."""
    try:
        return read_script(script, loaded.base_dir, max_bytes=get_settings().max_file_bytes)
    except Refused as exc:
        raise InvalidDefinition([script_problem(loaded, index, script, exc)]) from None


def snapshot_sha256(snapshot: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(snapshot).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def snapshot_graph(snapshot: Mapping[str, Any]) -> Graph:
    """The DAG still to execute: steps reused from an earlier run (rerun) are left out."""
    reused = snapshot.get("reused") or {}
    return Graph(
        {
            s["id"]: [n for n in s["needs"] if n not in reused]
            for s in snapshot["steps"]
            if s["id"] not in reused
        }
    )


def mode_for_snapshot(snapshot: Mapping[str, Any]) -> tuple[str, str]:
    """choose_mode for a frozen snapshot (used when a rerun executes part of a DAG)."""
    reused = snapshot.get("reused") or {}
    shapes = [StepShape.of_spec(s) for s in snapshot["steps"] if s["id"] not in reused]
    return _mode(snapshot_graph(snapshot), shapes)


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How a run is dispatched; printable for `runbook-celery plan`.

    ``notes``: how the steps with extras (``if:``, ``matrix``, ``for_each``) run;
    ``handoffs``: the steps that may run after a failure or a cancel, which make a canvas
    run continue by dynamic dispatch from its first failure or cancel.
    """

    mode: str
    tree: SPTree | None
    graph: Graph
    witness: tuple[str, str, str, str] | None = None
    reason: str = ""
    notes: Mapping[str, str] = field(default_factory=dict)
    handoffs: tuple[str, ...] = ()

    def render(self) -> str:
        if self.mode == CANVAS and self.tree is not None:
            text = "canvas (exact mirror of the DAG):\n" + _render_tree(self.tree, 1, self.notes)
            if self.handoffs:
                text += (
                    "\nat the first failure or cancel, the run continues by dynamic dispatch "
                    "from its record (a canvas stops at a failure), because:\n"
                    + "\n".join(f"  {why}" for why in self.handoffs)
                )
            return text
        lines = ["dynamic dispatch (the DAG is not series-parallel, so no canvas mirrors it)"]
        if self.witness:
            a, b, c, d = self.witness
            lines.append(
                f"  N-shape: {c} needs {a}; {d} needs {a} and {b}; {b} and {c} are unrelated, "
                f"so a canvas would make {c} wait for {b} or {d} wait for more"
            )
        lines.append("  each step is published when all of its needs have finished (Redis join):")
        for step in self.graph.topological():
            needs = self.graph.needs[step]
            after = f" after {', '.join(needs)}" if needs else " at start"
            note = f"  [{self.notes[step]}]" if step in self.notes else ""
            lines.append(f"    {step}{after}{note}")
        return "\n".join(lines)


def make_plan(graph: Graph, workflow: Any = None) -> Plan:
    """The dispatch plan; with ``workflow``, how the steps' extras run is said too."""
    tree = graph.series_parallel()
    shapes = [StepShape.of_step(s) for s in workflow.steps] if workflow is not None else []
    notes = step_notes(shapes, get_settings().max_instances if shapes else None)
    if tree is None:
        return Plan(
            DYNAMIC, None, graph, _n_witness(graph), "the DAG is not series-parallel", notes
        )
    mode, reason = _mode(graph, shapes)
    return Plan(mode, tree, graph, reason=reason, notes=notes, handoffs=tuple(handoffs(shapes)))


def _render_tree(tree: SPTree, depth: int, notes: Mapping[str, str]) -> str:
    pad = "  " * depth
    if isinstance(tree, Leaf):
        note = f"  [{notes[tree.step]}]" if tree.step in notes else ""
        return f"{pad}{tree.step}{note}"
    name = "chain" if isinstance(tree, Series) else "group"
    inner = ",\n".join(_render_tree(p, depth + 1, notes) for p in tree.parts)
    return f"{pad}{name}(\n{inner}\n{pad})"


def _n_witness(graph: Graph, limit: int = 40) -> tuple[str, str, str, str] | None:
    """Four steps a<c, a<d, b<d with b||c, a||b, c||d: why the DAG is not series-parallel."""
    steps = graph.topological()
    if len(steps) > limit:
        return None
    lt = graph.precedes

    def unrelated(u: str, v: str) -> bool:
        return not lt(u, v) and not lt(v, u)

    for a, b in combinations(steps, 2):
        for x, y in ((a, b), (b, a)):
            if not unrelated(x, y):
                continue
            for c in steps:
                if not lt(x, c) or not unrelated(y, c):
                    continue
                for d in steps:
                    if d != c and lt(x, d) and lt(y, d) and unrelated(c, d):
                        return (x, y, c, d)
    return None


def cancel_survivors(snapshot: Mapping[str, Any]) -> list[str]:
    """Steps that still run after a cancel: their if: uses always() or cancelled()."""
    out = []
    for spec in snapshot["steps"]:
        if spec.get("if"):
            try:
                used = ex.calls(ex.parse_condition(spec["if"]))
            except ex.ExpressionError:
                continue
            if used & {"always", "cancelled"}:
                out.append(spec["id"])
    return out
