"""The DAG of steps: checks and structure. Pure: no Celery, no Redis, no I/O.

The series-parallel decomposition decides whether a DAG can be mirrored exactly by Celery
canvas (chain = series, group/chord = parallel). A DAG whose order contains an "N"
(a->c, a->d, b->d with b, c unrelated) cannot: such runs use dynamic dispatch
(docs/architecture.md, "What a run is guaranteed").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
        self._sp: tuple[SPTree | None] | None = None

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
        """The SP decomposition of the DAG's order, or None when it contains an N.

        Relations are bitsets (Python ints) over step indexes, so a decomposition of a few
        thousand steps costs milliseconds rather than seconds. Computed once per graph.
        """
        if self._sp is None:
            self._sp = (self._decompose(),)
        return self._sp[0]

    def _decompose(self) -> SPTree | None:
        index = {s: i for i, s in enumerate(self.order_hint)}
        order = self.topological()
        below = [0] * len(index)  # bitset of ancestors per step
        for step in order:
            mask = 0
            for need in self.needs[step]:
                mask |= below[index[need]] | (1 << index[need])
            below[index[step]] = mask
        above = [0] * len(index)  # bitset of descendants per step
        for step in reversed(order):
            mask = 0
            for child in self.children[step]:
                mask |= above[index[child]] | (1 << index[child])
            above[index[step]] = mask
        related = [b | a for b, a in zip(below, above, strict=True)]
        self._bits = (below, related)
        everything = (1 << len(index)) - 1
        return self._sp_bits(everything)

    def _sp_bits(self, members: int) -> SPTree | None:
        below, related = self._bits
        if members & (members - 1) == 0:
            return Leaf(self.order_hint[members.bit_length() - 1])
        comparable = _bit_components(members, lambda u: related[u])
        if len(comparable) > 1:
            parts = [self._sp_bits(c) for c in comparable]
            return None if None in parts else Parallel(_flatten(parts, Parallel))  # type: ignore[arg-type]
        incomparable = _bit_components(members, lambda u: ~related[u] & ~(1 << u))
        if len(incomparable) > 1:
            # blocks of a series are totally ordered: sort by how many members precede them
            def rank(c: int) -> int:
                return (below[(c & -c).bit_length() - 1] & members).bit_count()

            parts = [self._sp_bits(c) for c in sorted(incomparable, key=rank)]
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


def _bit_components(members: int, neighbours: Callable[[int], int]) -> list[int]:
    """Connected components (as bitsets) of ``members`` under a symmetric relation."""
    remaining = members
    out: list[int] = []
    while remaining:
        low = remaining & -remaining
        comp, frontier = low, low
        remaining ^= low
        while frontier:
            bit = frontier & -frontier
            frontier ^= bit
            linked = remaining & neighbours(bit.bit_length() - 1)
            remaining &= ~linked
            comp |= linked
            frontier |= linked
        out.append(comp)
    return out


def _flatten(parts: list[SPTree], kind: type[Series] | type[Parallel]) -> tuple[SPTree, ...]:
    out: list[SPTree] = []
    for p in parts:
        if isinstance(p, kind):
            out.extend(p.parts)
        else:
            out.append(p)
    return tuple(out)
