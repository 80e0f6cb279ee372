"""The DAG of steps: checks and structure. Pure: no Celery, no Redis, no I/O.

The series-parallel decomposition decides whether a DAG can be mirrored exactly by Celery
canvas (chain = series, group/chord = parallel). A DAG whose order contains an "N"
(a->c, a->d, b->d with b, c unrelated) cannot; see CELERY-NOTES.md section 1.1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter


@dataclass(frozen=True)
class Leaf:
    step: str


@dataclass(frozen=True)
class Series:
    parts: tuple[SPTree, ...]


@dataclass(frozen=True)
class Parallel:
    parts: tuple[SPTree, ...]


SPTree = Leaf | Series | Parallel


class Graph:
    """Steps and their needs, with the derived relations the engine asks about."""

    def __init__(self, needs: Mapping[str, Iterable[str]]) -> None:
        self.order_hint = list(needs)  # definition order, used to keep output stable
        self.needs: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in needs.items()}
        self.children: dict[str, list[str]] = {k: [] for k in self.needs}
        for step, deps in self.needs.items():
            for dep in deps:
                self.children[dep].append(step)
        self._ancestors: dict[str, frozenset[str]] = {}

    def topological(self) -> list[str]:
        """Steps in an order where every step comes after its needs (ties by definition)."""
        ts = TopologicalSorter(self.needs)
        ts.prepare()
        rank = {s: i for i, s in enumerate(self.order_hint)}
        out: list[str] = []
        while ts.is_active():
            ready = sorted(ts.get_ready(), key=rank.__getitem__)
            out.extend(ready)
            ts.done(*ready)
        return out

    def ancestors(self, step: str) -> frozenset[str]:
        """Every step that ``step`` needs, directly or transitively."""
        if step not in self._ancestors:
            seen: set[str] = set()
            stack = list(self.needs[step])
            while stack:
                s = stack.pop()
                if s not in seen:
                    seen.add(s)
                    stack.extend(self.needs[s])
            self._ancestors[step] = frozenset(seen)
        return self._ancestors[step]

    def descendants(self, step: str) -> set[str]:
        """Every step that needs ``step``, directly or transitively."""
        seen: set[str] = set()
        stack = list(self.children[step])
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(self.children[s])
        return seen

    def sources(self) -> list[str]:
        return [s for s in self.order_hint if not self.needs[s]]

    def precedes(self, a: str, b: str) -> bool:
        return a in self.ancestors(b)

    def series_parallel(self) -> SPTree | None:
        """The SP decomposition of the DAG's order, or None when it contains an N."""
        return self._sp(list(self.order_hint))

    def _sp(self, steps: list[str]) -> SPTree | None:
        if len(steps) == 1:
            return Leaf(steps[0])
        comparable = _components(steps, lambda u, v: self.precedes(u, v) or self.precedes(v, u))
        if len(comparable) > 1:
            parts = [self._sp(c) for c in comparable]
            return None if None in parts else Parallel(_flatten(parts, Parallel))  # type: ignore[arg-type]
        incomparable = _components(
            steps, lambda u, v: not (self.precedes(u, v) or self.precedes(v, u))
        )
        if len(incomparable) > 1:
            # blocks of a series are totally ordered: sort by how many steps precede them
            blocks = sorted(
                incomparable, key=lambda c: sum(1 for s in steps if self.precedes(s, c[0]))
            )
            parts = [self._sp(c) for c in blocks]
            return None if None in parts else Series(_flatten(parts, Series))  # type: ignore[arg-type]
        return None


def find_cycle(needs: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]`` if the needs relation has one (unknown needs ignored)."""
    known = {k: [d for d in v if d in needs] for k, v in needs.items()}
    try:
        TopologicalSorter(known).prepare()
    except CycleError as exc:
        cycle = list(exc.args[1])
        cycle.reverse()  # graphlib reports it against the needs direction
        return cycle
    return None


def _components(steps: list[str], related) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Connected components of ``steps`` under a symmetric relation, in definition order."""
    remaining = list(steps)
    out: list[list[str]] = []
    while remaining:
        comp = [remaining.pop(0)]
        i = 0
        while i < len(comp):
            u = comp[i]
            linked = [v for v in remaining if related(u, v)]
            for v in linked:
                remaining.remove(v)
            comp.extend(linked)
            i += 1
        order = {s: n for n, s in enumerate(steps)}
        out.append(sorted(comp, key=order.__getitem__))
    return out


def _flatten(parts: list[SPTree], kind: type) -> tuple[SPTree, ...]:
    out: list[SPTree] = []
    for p in parts:
        if isinstance(p, kind):
            out.extend(p.parts)  # type: ignore[attr-defined]
        else:
            out.append(p)
    return tuple(out)
