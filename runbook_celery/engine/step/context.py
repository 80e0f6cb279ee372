"""A run as a step delivery sees it: its snapshot parsed once per worker process.

Snapshots never change once recorded, so a pool process keeps each run's parsed form in an
LRU bounded by the steps it holds, and drops a run's entry when the run ends.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ...definition.graph import Graph
from ...plan.canvasplan import hands_off
from ...plan.compile import snapshot_graph
from ...store import RunStore

_INSTANCE = re.compile(r"^(?P<parent>.+)\[(?P<index>0|[1-9][0-9]{0,8})\]$")


def fans_out(spec: dict[str, Any]) -> bool:
    return bool(spec.get("matrix") or spec.get("for_each"))


@dataclass(frozen=True)
class RunContext:
    """A run's snapshot parsed once per worker process (it never changes)."""

    snapshot: dict[str, Any]
    graph: Graph  # what this run executes (a rerun leaves out the steps it reuses)
    steps: dict[str, dict[str, Any]]

    @property
    def workflow(self) -> str:
        workflow: str = self.snapshot["workflow"]
        return workflow

    @cached_property
    def hands_off(self) -> bool:
        """A canvas run of this snapshot continues by dynamic dispatch at a failure
        (it has steps that may run after one: canvasplan)."""
        return hands_off(self.snapshot["steps"])

    @cached_property
    def full_graph(self) -> Graph:
        """Every step of the snapshot, reused ones too: what ``if:`` conditions look at."""
        return Graph({s["id"]: list(s["needs"]) for s in self.snapshot["steps"]})

    def knows(self, step_id: str, *, fan_in: bool = False) -> bool:
        """Whether ``step_id`` names a step (or an instance of a fanning-out step) of this
        run: anything else in a message is forged or stale and is dropped."""
        if step_id in self.steps:
            return not fan_in or fans_out(self.steps[step_id])
        m = _INSTANCE.match(step_id)
        return m is not None and not fan_in and fans_out(self.steps.get(m["parent"]) or {})


class RunCache:
    """LRU of run contexts, bounded by the steps it holds (a 2,500-step snapshot is MBs).

    Snapshots are immutable, so caching is always safe; a run's entry is dropped when the
    run ends, so finished runs do not sit in every pool process.
    """

    def __init__(self, max_steps: int = 5_000) -> None:
        self.max_steps = max_steps
        self.items: OrderedDict[str, RunContext] = OrderedDict()
        self.steps = 0
        self.lock = threading.Lock()

    def get(self, store: RunStore, run_id: str) -> RunContext:
        with self.lock:
            ctx = self.items.get(run_id)
            if ctx is not None:
                self.items.move_to_end(run_id)
                return ctx
        snap = store.snapshot(run_id)
        ctx = RunContext(snap, snapshot_graph(snap), {s["id"]: s for s in snap["steps"]})
        with self.lock:
            if run_id not in self.items:
                self.items[run_id] = ctx
                self.steps += len(ctx.steps)
            while self.steps > self.max_steps and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.steps -= len(old.steps)
        return ctx

    def drop(self, run_id: str) -> None:
        with self.lock:
            old = self.items.pop(run_id, None)
            if old is not None:
                self.steps -= len(old.steps)


cache = RunCache()  # this process's runs
