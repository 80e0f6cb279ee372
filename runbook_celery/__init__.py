"""runbook-celery: YAML workflows of Bash steps, compiled to Celery canvas, run on Redis."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .core.errors import (
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

if TYPE_CHECKING:
    from .client.api import asubmit, get_run, rerun, submit
    from .client.run import Run, RunLogs
    from .definition.loader import load_workflow
    from .definition.model import Step, Workflow
    from .plan.runrecord import RunRecord, StepRecord

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
    "submit": "client.api",
    "Run": "client.run",
    "RunLogs": "client.run",
    "get_run": "client.api",
    "rerun": "client.api",
    "asubmit": "client.api",
    "load_workflow": "definition.loader",
    "Step": "definition.model",
    "Workflow": "definition.model",
    "RunRecord": "plan.runrecord",
    "StepRecord": "plan.runrecord",
    "celery": "engine.app",  # `celery -A runbook_celery` finds the app
}


def __getattr__(name: str) -> Any:
    """Import what a name needs when it is first used (PEP 562): the errors load nothing
    more, ``load_workflow`` no Celery, and a CLI command only its own layers;
    `celery -A runbook_celery` finds the app as ``celery``."""
    if name in _LAZY:
        module = import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, "app" if name == "celery" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
