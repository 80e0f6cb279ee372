"""runbook-celery: YAML workflows of Bash steps, compiled to Celery canvas, run on Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailable,
    DefinitionError,
    InvalidDefinition,
    InvalidOperation,
    InvalidParams,
    RunbookError,
    RunFailed,
    RunNotFound,
    WaitTimeout,
)
from .loader import load_workflow
from .model import Step, Workflow
from .runrecord import RunRecord, StepRecord

if TYPE_CHECKING:
    from .api import Run, RunLogs, get_run, rerun, submit
    from .asyncapi import asubmit

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "DefinitionError",
    "InvalidDefinition",
    "InvalidOperation",
    "InvalidParams",
    "Run",
    "RunFailed",
    "RunLogs",
    "RunNotFound",
    "RunRecord",
    "RunbookError",
    "Step",
    "StepRecord",
    "WaitTimeout",
    "Workflow",
    "__version__",
    "asubmit",
    "get_run",
    "load_workflow",
    "rerun",
    "submit",
]

_LAZY = {
    "submit": "api",
    "Run": "api",
    "RunLogs": "api",
    "get_run": "api",
    "rerun": "api",
    "asubmit": "asyncapi",
}


def __getattr__(name: str) -> Any:
    """Import Celery only when something needs it; `celery -A runbook_celery` finds the app."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name == "celery":
        from .app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
