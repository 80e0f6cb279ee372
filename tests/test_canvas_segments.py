"""A long chain is sent in segments: messages stay bounded as the run grows (pure)."""

from __future__ import annotations

import json
from typing import Any

from runbook_celery.definition.graph import Leaf, Parallel, Series
from runbook_celery.definition.loader import from_mapping
from runbook_celery.engine.dispatch import _segments, build_segment
from runbook_celery.plan.canvassegments import SEGMENT_STEPS, groups, segment
from runbook_celery.plan.compile import build_snapshot, make_plan, snapshot_graph


def _linear(n: int, fan_at: int | None = None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {"id": f"s{i}", "run": "true"}
        if i:
            step["needs"] = [f"s{i - 1}"]
        if i == fan_at:
            step["matrix"] = {"k": [1, 2]}
        steps.append(step)
    return build_snapshot(from_mapping({"name": "lin", "steps": steps}))


def _messages(sig: Any) -> list[int]:
    """Sizes of the messages a chain sends, first to last (each carries what follows)."""
    d = json.loads(json.dumps(dict(sig)))
    tasks = d["kwargs"]["tasks"] if d["task"] == "celery.chain" else [d]
    return [len(json.dumps(tasks[i:])) for i in range(len(tasks))]


def test_a_short_chain_is_sent_whole():
    snapshot = _linear(SEGMENT_STEPS)
    tree = snapshot_graph(snapshot).series_parallel()
    assert _segments(snapshot, tree).first is None


def test_a_long_chain_is_cut_into_segments_each_sent_by_the_step_before_it():
    snapshot = _linear(100)
    tree = snapshot_graph(snapshot).series_parallel()
    segments = _segments(snapshot, tree)
    assert segments.first is not None
    assert [len(s.parts) for s in (segments.first, *segments.after.values())] == [32, 32, 32, 4]
    assert list(segments.after) == ["s31", "s63", "s95"]
    assert segments.after["s31"].parts[0] == Leaf("s32")


def test_a_segment_never_ends_at_a_fan_out_step():
    snapshot = _linear(100, fan_at=31)
    segments = _segments(snapshot, snapshot_graph(snapshot).series_parallel())
    assert next(iter(segments.after)) == "s32"


def test_segments_number_their_groups_as_the_whole_canvas_does():
    parts: list[Any] = []
    for i in range(40):
        parts += [Leaf(f"a{i}"), Parallel((Leaf(f"b{i}"), Leaf(f"c{i}")))]
    parts.append(Leaf("end"))
    segments = segment(Series(tuple(parts)), lambda _s: True)
    assert segments.first is not None
    seen = 0
    for seg in (segments.first, *segments.after.values()):
        assert seg.groups_before == seen  # build_segment counts on from here
        seen += sum(groups(p) for p in seg.parts)
    assert seen == 40


def test_messages_do_not_grow_with_the_length_of_the_chain():
    # Given linear workflows of 1,000 and 10,000 steps
    sizes = {}
    for n in (1_000, 10_000):
        snapshot = _linear(n)
        plan = make_plan(snapshot_graph(snapshot))
        assert plan.tree is not None
        segments = _segments(snapshot, plan.tree)
        assert segments.first is not None
        # When each segment is built as it is sent
        largest = max(
            max(_messages(build_segment(snapshot, "r" * 32, seg)))
            for seg in (segments.first, *segments.after.values())
        )
        sizes[n] = largest
    # Then the largest message is the same size for both (bounded by the segment length)
    assert sizes[10_000] <= sizes[1_000] * 1.1, sizes
    assert sizes[10_000] < 32 * 1024, sizes
