"""Turn a run's plan into Celery messages: one canvas, or the ready steps of a dynamic run.

Data never travels through the canvas: every signature is immutable and carries only
``(run_id, step_id)``; steps read what they need from the run store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import chain, group
from celery.canvas import Signature

from .app import STEP_TASK, app
from .compile import CANVAS
from .graph import Leaf, Parallel, Series, SPTree


def step_signature(snapshot: Mapping[str, Any], run_id: str, step_id: str) -> Signature:
    """The message for one step; named ``<workflow>.<step>`` in Flower."""
    return app.signature(
        STEP_TASK,
        args=(run_id, step_id),
        immutable=True,
        task_id=f"{run_id}.{step_id}",
        shadow=f"{snapshot['workflow']}.{step_id}",
        argsrepr=f"run={run_id} step={step_id}",
        kwargsrepr="{}",
    )


def build_canvas(
    snapshot: Mapping[str, Any], run_id: str, tree: SPTree, _groups: list[int] | None = None
) -> Signature:
    """Mirror the series-parallel tree: Series -> chain, Parallel -> group (chord when joined).

    Group ids are derived from the run id (``<run>.group<n>``) so that every key Celery
    writes for a run can be found from the run id.
    """
    counter = _groups if _groups is not None else [0]
    if isinstance(tree, Leaf):
        return step_signature(snapshot, run_id, tree.step)
    parts = [build_canvas(snapshot, run_id, p, counter) for p in tree.parts]
    if isinstance(tree, Series):
        return chain(*parts)
    assert isinstance(tree, Parallel)
    counter[0] += 1
    return group(*parts).set(task_id=f"{run_id}.group{counter[0]}")


def publish_run(snapshot: Mapping[str, Any], run_id: str, tree: SPTree | None) -> None:
    """Send a new run to the broker. Every step's Celery root_id is the run id."""
    if snapshot["mode"] == CANVAS and tree is not None:
        build_canvas(snapshot, run_id, tree).apply_async(root_id=run_id)
        return
    sources = [s["id"] for s in snapshot["steps"] if not s["needs"]]
    publish_steps(snapshot, run_id, sources)


def publish_steps(snapshot: Mapping[str, Any], run_id: str, step_ids: Iterable[str]) -> None:
    """Publish steps whose needs have all finished (dynamic dispatch)."""
    for sid in step_ids:
        step_signature(snapshot, run_id, sid).apply_async(root_id=run_id)
