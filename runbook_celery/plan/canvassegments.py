"""A long chain sent in segments, so that no message grows with the length of the run.

Pure (no Celery, no Redis). A Celery chain travels whole: the first message carries every
signature after it, the second all but one, and so on, so a chain of n steps costs O(n^2)
bytes (a 10,000-step chain's first message alone is over 2 MB). So the run's top-level
chain is cut into segments of about ``SEGMENT_STEPS`` steps. Only the first is sent at
submit; the task of the step that ends a segment sends the next one when it returns
normally (succeeded, or skipped: exactly when Celery would have continued the chain), and a
failed step raises, so what follows it is never sent, as in one chain. Each segment is
rebuilt by the worker from the run's snapshot (the same tree, the same task and group ids),
so nothing is stored for it.

A segment ends only at a plain step (a leaf of the top-level chain that does not fan out:
a fan-out's join continues its canvas, not the step's task). Long chains inside a group are
not cut.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..definition.graph import Leaf, Parallel, Series, SPTree

SEGMENT_STEPS = 32


@dataclass(frozen=True)
class Segment:
    """Consecutive parts of the top-level chain; ``groups_before``: the groups (Parallel
    nodes) in the parts before it, so its group ids are those of the whole canvas."""

    parts: tuple[SPTree, ...]
    groups_before: int


@dataclass(frozen=True)
class Segments:
    """``first`` is sent at submit; ``after[step]`` by the task of ``step`` when it returns.
    ``first`` is None when the tree is sent whole."""

    first: Segment | None = None
    after: Mapping[str, Segment] = field(default_factory=dict)


def leaves(tree: SPTree) -> int:
    if isinstance(tree, Leaf):
        return 1
    return sum(leaves(p) for p in tree.parts)


def groups(tree: SPTree) -> int:
    if isinstance(tree, Leaf):
        return 0
    return int(isinstance(tree, Parallel)) + sum(groups(p) for p in tree.parts)


def segment(
    tree: SPTree | None, can_end: Callable[[str], bool], size: int = SEGMENT_STEPS
) -> Segments:
    """Cut the top-level chain after a step that ``can_end`` a segment, once the segment
    holds at least ``size`` steps."""
    if not isinstance(tree, Series) or leaves(tree) <= size:
        return Segments()
    cut: list[tuple[list[SPTree], int]] = [([], 0)]
    ends: list[str] = []
    weight = seen_groups = 0
    for i, part in enumerate(tree.parts):
        cut[-1][0].append(part)
        weight += leaves(part)
        seen_groups += groups(part)
        last = i == len(tree.parts) - 1
        if weight >= size and not last and isinstance(part, Leaf) and can_end(part.step):
            ends.append(part.step)
            cut.append(([], seen_groups))
            weight = 0
    if len(cut) == 1:
        return Segments()
    segments = [Segment(tuple(parts), before) for parts, before in cut]
    return Segments(segments[0], dict(zip(ends, segments[1:], strict=True)))
