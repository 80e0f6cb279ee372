"""The Python API of a client: ``submit()``, ``asubmit()``, ``rerun()``, ``get_run()``, and
``Run``, the handle they return (``run.py``); starting a run is ``submission.py``'s."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.settings import Settings, get_settings
from ..definition.loader import LoadedWorkflow, from_mapping, from_model, load_workflow
from ..definition.model import Workflow
from ..plan.compile import build_snapshot
from ..plan.runrecord import RunRecord
from .run import Run, RunLogs
from .submission import start_rerun, start_run

# Run and RunLogs are public (runbook_celery.__all__) and documented as this module's
__all__ = [
    "Run",
    "RunLogs",
    "WorkflowSource",
    "asubmit",
    "get_run",
    "load_source",
    "rerun",
    "submit",
    "submit_snapshot",
]

# a path to a YAML file, a Workflow built in Python, or its dict (validated like YAML)
WorkflowSource = str | Path | Workflow | LoadedWorkflow | Mapping[str, Any]


def load_source(source: WorkflowSource) -> LoadedWorkflow:
    """A file, a Workflow, a dict or an already loaded workflow, validated."""
    if isinstance(source, LoadedWorkflow):
        return source
    if isinstance(source, Workflow):
        return from_model(source)
    if isinstance(source, Mapping):
        return from_mapping(source)
    return load_workflow(source)


def submit(
    source: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """Validate, snapshot, record and enqueue a run. Nothing is recorded if it cannot start.

    Raises:
        InvalidDefinition / InvalidParams: the workflow or params are not valid.
        BackendUnavailable: Redis or the broker did not answer.
    """
    settings = settings or get_settings()
    loaded = load_source(source)
    snapshot = build_snapshot(loaded, params)
    return submit_snapshot(snapshot, settings=settings, extra=extra)


def submit_snapshot(
    snapshot: dict[str, Any],
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """Record and enqueue a run from an already frozen snapshot (submit, rerun)."""
    settings = settings or get_settings()
    return Run(start_run(snapshot, settings=settings, extra=extra), settings)


async def asubmit(
    source: WorkflowSource,
    params: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    extra: Mapping[str, str] | None = None,
) -> Run:
    """``submit()`` for asyncio code: same validation, same errors, returns the same ``Run``.

    Celery publishes synchronously, so the submission runs in a worker thread.
    """
    return await asyncio.to_thread(submit, source, params, settings=settings, extra=extra)


def rerun(
    run_id: str,
    *,
    from_failed: bool = False,
    from_step: str | None = None,
    settings: Settings | None = None,
    by: str | None = None,
) -> Run:
    """Start a new run from an earlier run's snapshot (never today's YAML).

    ``from_failed`` reuses the outputs of the steps that succeeded and runs the failed,
    skipped and cancelled ones; ``from_step`` reruns that step and everything downstream
    (and anything that had not succeeded). The original run is left unchanged. ``by`` is
    recorded as the new run's ``triggered_by``.
    """
    settings = settings or get_settings()
    return Run(start_rerun(run_id, from_failed, from_step, settings, by), settings)


def get_run(run_id: str, *, settings: Settings | None = None) -> RunRecord:
    """The current record of a run. Raises RunNotFound."""
    return Run(run_id, settings).status()
