"""The run's DAG as SVG: a layered layout computed on the server, painted by step status.

Pure (no Redis, no tornado). Steps go left to right in layers (a step's layer is the
longest path of needs before it), ordered inside a layer by the barycentre of their
needs to keep edges short and crossings few. The layout depends only on the frozen
snapshot, so it is cached; painting (status classes, fan-out bars) is redone on each
update. Matrix and ``for_each`` instances are drawn inside their step's node as one bar
of status segments with counts, not as separate nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from html import escape

NODE_W = 180
NODE_H = 46
FAN_H = 16  # extra height of a fanned-out step's node, for its instance bar
H_GAP = 64
V_GAP = 18
MARGIN = 12
SWEEPS = 4
LABEL_CHARS = 24

# Statuses in the order their segments appear in a fan-out bar.
BAR_ORDER = (
    "succeeded",
    "failed",
    "running",
    "retrying",
    "awaiting_approval",
    "awaiting_decision",
    "waiting",
    "pending",
    "skipped",
    "cancelled",
)

NeedsItems = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Layout:
    """Where each step's node is (top-left corner) and the size of the drawing."""

    pos: Mapping[str, tuple[int, int]]
    layer: Mapping[str, int]
    width: int
    height: int
    row_h: int


def needs_items(needs: Mapping[str, Sequence[str]]) -> NeedsItems:
    """A hashable form of ``{step: needs}`` in definition order (the layout cache key)."""
    return tuple((step, tuple(deps)) for step, deps in needs.items())


@lru_cache(maxsize=64)
def layout(items: NeedsItems, fanned: frozenset[str] = frozenset()) -> Layout:
    """Layers by longest path, order in a layer by barycentre sweeps, then coordinates."""
    needs = dict(items)
    layer: dict[str, int] = {}
    for step in _topological(needs):
        layer[step] = 1 + max((layer[d] for d in needs[step]), default=-1)
    layers: list[list[str]] = [[] for _ in range(1 + max(layer.values(), default=-1))]
    for step in needs:  # definition order is the starting order inside each layer
        layers[layer[step]].append(step)
    children: dict[str, list[str]] = {s: [] for s in needs}
    for step, deps in needs.items():
        for dep in deps:
            children[dep].append(step)
    for sweep in range(SWEEPS):
        forward = sweep % 2 == 0
        rng = range(1, len(layers)) if forward else range(len(layers) - 2, -1, -1)
        for i in rng:
            ref = layers[i - 1] if forward else layers[i + 1]
            rank = {s: n for n, s in enumerate(ref)}
            links = needs if forward else children
            layers[i] = _by_barycentre(layers[i], links, rank)
    row_h = NODE_H + (FAN_H if fanned else 0) + V_GAP
    tallest = max((len(m) for m in layers), default=0)
    pos = {}
    for col, members in enumerate(layers):
        top = MARGIN + (tallest - len(members)) * row_h // 2  # centre each layer
        for row, step in enumerate(members):
            pos[step] = (MARGIN + col * (NODE_W + H_GAP), top + row * row_h)
    width = 2 * MARGIN + len(layers) * (NODE_W + H_GAP) - H_GAP
    height = 2 * MARGIN + tallest * row_h - V_GAP
    return Layout(pos, layer, max(width, NODE_W), max(height, NODE_H), row_h)


def _topological(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's order; the snapshot was validated acyclic, so every step comes out."""
    indegree = {s: len(set(d)) for s, d in needs.items()}
    children: dict[str, list[str]] = {s: [] for s in needs}
    for step, deps in needs.items():
        for dep in set(deps):
            children[dep].append(step)
    ready = [s for s in needs if indegree[s] == 0]
    out: list[str] = []
    while ready:
        step = ready.pop(0)
        out.append(step)
        for child in children[step]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return out


def _by_barycentre(
    members: list[str], links: Mapping[str, Sequence[str] | list[str]], rank: Mapping[str, int]
) -> list[str]:
    """Members sorted by the mean rank of their linked steps in the neighbouring layer."""
    keyed = []
    for index, step in enumerate(members):
        linked = [rank[o] for o in links[step] if o in rank]
        keyed.append((sum(linked) / len(linked) if linked else float(index), index, step))
    return [step for _, _, step in sorted(keyed)]


@dataclass(frozen=True)
class Node:
    """What a node shows: its status and, for a fanned-out step, its instances' statuses."""

    status: str
    instances: Mapping[str, int] | None = None  # status -> count


def svg(
    needs: Mapping[str, Sequence[str]], nodes: Mapping[str, Node], *, link_prefix: str = "#step-"
) -> str:
    """The DAG as an SVG element; each node links to its row in the step table."""
    fanned = frozenset(s for s, n in nodes.items() if n.instances is not None)
    lay = layout(needs_items(needs), fanned)
    h = NODE_H + (FAN_H if fanned else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rb-dag" width="{lay.width}" '
        f'height="{lay.height}" viewBox="0 0 {lay.width} {lay.height}" role="img" '
        f'aria-label="DAG of {len(needs)} steps">'
    ]
    for step, deps in needs.items():
        x2, y2 = lay.pos[step]
        target = nodes.get(step, Node("pending")).status
        for dep in deps:
            x1, y1 = lay.pos[dep]
            sx, sy, ex, ey = x1 + NODE_W, y1 + h // 2, x2, y2 + h // 2
            mid = (sx + ex) // 2
            parts.append(
                f'<path class="rb-edge rb-edge-{_cls(target)}" data-from="{escape(dep)}" '
                f'data-to="{escape(step)}" d="M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}"/>'
            )
    for step in needs:
        parts.append(_node(step, lay.pos[step], h, nodes.get(step, Node("pending")), link_prefix))
    parts.append("</svg>")
    return "".join(parts)


def _node(step: str, at: tuple[int, int], h: int, node: Node, link_prefix: str) -> str:
    x, y = at
    label = step if len(step) <= LABEL_CHARS else step[: LABEL_CHARS - 1] + "…"
    title = f"{step}: {node.status.replace('_', ' ')}"
    sub = node.status.replace("_", " ")
    bar = ""
    if node.instances is not None:
        total = sum(node.instances.values())
        done = node.instances.get("succeeded", 0)
        sub = f"{sub} · {done}/{total}"
        title += "; instances: " + ", ".join(
            f"{n} {s.replace('_', ' ')}" for s, n in _ordered(node.instances)
        )
        bar = _bar(x + 8, y + NODE_H - 4, NODE_W - 16, node.instances)
    return (
        f'<a href="{escape(link_prefix + step)}" class="rb-node-link">'
        f'<g class="rb-node rb-st-{_cls(node.status)}" data-step="{escape(step)}" '
        f'data-status="{escape(node.status)}"><title>{escape(title)}</title>'
        f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{h}" rx="7"/>'
        f'<text x="{x + 10}" y="{y + 19}" class="rb-node-label">{escape(label)}</text>'
        f'<text x="{x + 10}" y="{y + 36}" class="rb-node-sub">{escape(sub)}</text>'
        f"{bar}</g></a>"
    )


def _bar(x: int, y: int, width: int, counts: Mapping[str, int]) -> str:
    """Instance statuses as one bar of proportional segments (readable at 10,000 instances)."""
    total = sum(counts.values())
    if total == 0:
        return f'<rect x="{x}" y="{y}" width="{width}" height="8" class="rb-bar-empty"/>'
    out, offset = [], 0.0
    for status, n in _ordered(counts):
        w = width * n / total
        out.append(
            f'<rect x="{x + offset:.1f}" y="{y}" width="{max(w, 1.0):.1f}" height="8" '
            f'class="rb-seg rb-st-{_cls(status)}"/>'
        )
        offset += w
    return "".join(out)


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(s, counts[s]) for s in BAR_ORDER if counts.get(s)]
    return known + [(s, n) for s, n in counts.items() if s not in BAR_ORDER and n]


def _cls(status: str) -> str:
    """A status as a CSS class fragment (statuses are our vocabulary; anything else: other)."""
    return status if status.replace("_", "").isalpha() else "other"
