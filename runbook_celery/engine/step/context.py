"""A run as a step delivery sees it: its snapshot parsed once per worker process.

The stored snapshot is parsed into the typed ``RunSnapshot`` (``plan/snapshot.py``) and
its format version checked here, once per run; snapshots never change once recorded, so
a pool process keeps each run's parsed form in an LRU bounded by the steps it holds, and
drops a run's entry when the run ends.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ...definition.graph import Graph
from ...plan.canvasplan import hands_off
from ...plan.compile import cancel_survivors, snapshot_graph
from ...plan.snapshot import RunSnapshot, StepSpec
from ...store import RunStore

_INSTANCE = re.compile(r"^(?P<parent>.+)\[(?P<index>0|[1-9][0-9]{0,8})\]$")


@dataclass(frozen=True)
class RunContext:
    """A run's snapshot parsed once per worker process (it never changes)."""

    snapshot: RunSnapshot
    graph: Graph  # what this run executes (a rerun leaves out the steps it reuses)

    @classmethod
    def of(cls, run_id: str, stored: dict[str, Any]) -> RunContext:
        """Parse and check a stored snapshot (``UnsupportedSnapshot`` if it is newer)."""
        snapshot = RunSnapshot.parse(run_id, stored)
        return cls(snapshot, snapshot_graph(stored))

    @property
    def steps(self) -> Mapping[str, StepSpec]:
        return self.snapshot.steps

    @property
    def raw(self) -> Mapping[str, Any]:
        """The snapshot as stored, for what passes it on (dispatch, child runs)."""
        return self.snapshot.raw

    @property
    def workflow(self) -> str:
        return self.snapshot.workflow

    @cached_property
    def hands_off(self) -> bool:
        """A canvas run of this snapshot continues by dynamic dispatch at a failure
        (it has steps that may run after one: canvasplan)."""
        return hands_off(self.raw["steps"])

    @cached_property
    def full_graph(self) -> Graph:
        """Every step of the snapshot, reused ones too: what ``if:`` conditions look at."""
        return Graph({s.id: list(s.needs) for s in self.steps.values()})

    @cached_property
    def survivors(self) -> frozenset[str]:
        """Steps that still run after a cancel (``always()``/``cancelled()`` in ``if:``)."""
        return frozenset(cancel_survivors(self.raw))

    def knows(self, step_id: str, *, fan_in: bool = False) -> bool:
        """Whether ``step_id`` names a step (or an instance of a fanning-out step) of this
        run: anything else in a message is forged or stale and is dropped."""
        if step_id in self.steps:
            return not fan_in or self.steps[step_id].fans_out
        m = _INSTANCE.match(step_id)
        spec = self.steps.get(m["parent"]) if m is not None else None
        return spec is not None and not fan_in and spec.fans_out


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
        ctx = RunContext.of(run_id, store.snapshot(run_id))
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
