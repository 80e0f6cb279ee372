"""Run a workflow in-process for tests: no Redis server, no worker, Bash really executed.

    from runbook_celery.testing import run_workflow

    def test_deploy_needs_build():
        result = run_workflow("definitions/diamond.yaml", {"target": "staging"})
        assert result.status == "succeeded"
        assert result.steps["build"].outputs == {"artifact": "app.tar.gz"}

The engine is the real one: the run store's Lua scripts run on an in-memory Redis
(fakeredis, as in the store's double ``runbook_celery.store.memory``), and the step task's
own code (claim, lease, Bash, record, hand on) runs for each step message. What replaces
Celery is a small dispatcher: every message the engine publishes is queued in this process
and delivered one at a time, in order, so steps run one after another (never in parallel)
as their needs finish. The run is planned in dynamic mode (each step published when its
needs have ended), the mode a canvas run fails over to, so statuses, outputs, skips and
retries are those of a real run.

Differences from a real deployment, on purpose:

* a step's retry ``delay`` is not waited for (``retry_delays=True`` waits);
* a workflow ``timeout:`` is checked between steps, not while one runs (a step's own
  ``timeout:`` works as usual);
* child runs of ``uses:`` steps are dispatched dynamically, as the run itself is;
* a step awaiting approval or a decision ends the call with the run still open
  (``result.finished`` is False): there is nobody to approve, and its approval
  ``timeout`` is not waited for.

Not thread-safe: one in-process run at a time (a lock makes concurrent calls wait).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .harness import RunResult, StuckRun, run_workflow

__all__ = ["RunResult", "StuckRun", "run_workflow"]


def __getattr__(name: str) -> Any:
    """The harness (``harness.py``) is imported on first use (PEP 562): pytest loads this
    package for every project that installs runbook-celery (the ``runbook`` fixture's
    plugin), before the project's conftest sets ``RUNBOOK_*``, so importing the engine here
    would read the settings too early and load Celery into every test session."""
    if name in __all__:
        return getattr(import_module(".harness", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
