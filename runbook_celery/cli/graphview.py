"""The DAG as Mermaid or Graphviz DOT text; for a run, each step coloured by its status.

Pure: the CLI loads the workflow or the run and passes plain data in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..store.events import StepStatus

FORMATS = ("mermaid", "dot")

# fill, stroke, text colour per step status (Material palette: readable in light and dark)
COLOURS: dict[str, tuple[str, str, str]] = {
    StepStatus.PENDING: ("#eeeeee", "#9e9e9e", "#424242"),
    StepStatus.RUNNING: ("#bbdefb", "#1565c0", "#0d47a1"),
    StepStatus.RETRYING: ("#fff9c4", "#f9a825", "#f57f17"),
    StepStatus.SUCCEEDED: ("#c8e6c9", "#2e7d32", "#1b5e20"),
    StepStatus.FAILED: ("#ffcdd2", "#c62828", "#b71c1c"),
    StepStatus.SKIPPED: ("#f5f5f5", "#bdbdbd", "#757575"),
    StepStatus.CANCELLED: ("#ffe0b2", "#ef6c00", "#e65100"),
}
_DASHED = frozenset({StepStatus.SKIPPED})


@dataclass(frozen=True)
class GraphView:
    """Steps in definition order with their needs; ``status`` is set for a run."""

    name: str
    needs: Mapping[str, Sequence[str]]
    status: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None

    @classmethod
    def from_snapshot(
        cls,
        snapshot: Mapping[str, Any],
        status: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> GraphView:
        """From a run's frozen snapshot (``store.snapshot``) or ``compile.build_snapshot``."""
        needs = {s["id"]: tuple(s.get("needs", ())) for s in snapshot["steps"]}
        return cls(snapshot["workflow"], needs, dict(status or {}), run_id)

    def label(self, step: str) -> str:
        status = self.status.get(step)
        return f"{step} ({status})" if status else step


def render(view: GraphView, fmt: str) -> str:
    if fmt == "dot":
        return dot(view)
    if fmt == "mermaid":
        return mermaid(view)
    raise ValueError(f"unknown graph format {fmt!r}; use one of {', '.join(FORMATS)}")


def mermaid(view: GraphView) -> str:
    """A Mermaid flowchart; node ids are synthetic so no step id can clash with a keyword."""
    node = {step: f"s{i}" for i, step in enumerate(view.needs)}
    title = f"workflow {view.name}" + (f", run {view.run_id}" if view.run_id else "")
    lines = [f"%% {title}", "flowchart LR"]
    lines += [f'  {node[s]}["{_mermaid_text(view.label(s))}"]' for s in view.needs]
    for step, needs in view.needs.items():
        lines += [f"  {node[n]} --> {node[step]}" for n in needs]
    used = [s for s in COLOURS if s in set(view.status.values())]
    for status in used:
        fill, stroke, text = COLOURS[status]
        style = f"fill:{fill},stroke:{stroke},color:{text}"
        if status in _DASHED:
            style += ",stroke-dasharray:4 4"
        lines.append(f"  classDef {status} {style}")
    for status in used:
        members = ",".join(node[s] for s in view.needs if view.status.get(s) == status)
        lines.append(f"  class {members} {status}")
    return "\n".join(lines) + "\n"


def dot(view: GraphView) -> str:
    """A Graphviz digraph, left to right, rounded boxes filled by status."""
    lines = [
        f"digraph {_dot_id(view.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica"];',
    ]
    if view.run_id:
        lines.append(f"  label={_dot_id(f'run {view.run_id}')}; labelloc=t;")
    for step in view.needs:
        attrs = [f"label={_dot_id(view.label(step))}"]
        status = view.status.get(step)
        if status in COLOURS:
            fill, stroke, text = COLOURS[status]
            style = "rounded,filled,dashed" if status in _DASHED else "rounded,filled"
            attrs += [
                f'fillcolor="{fill}"',
                f'color="{stroke}"',
                f'fontcolor="{text}"',
                f'style="{style}"',
            ]
        lines.append(f"  {_dot_id(step)} [{', '.join(attrs)}];")
    for step, needs in view.needs.items():
        lines += [f"  {_dot_id(n)} -> {_dot_id(step)};" for n in needs]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    """Text inside a quoted Mermaid label: entity codes for what would end or break it."""
    for char, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, code)
    return text


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
