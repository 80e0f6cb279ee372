"""The ``runbook`` pytest fixture, registered for every project that installs runbook-celery.

Kept light: nothing of the engine is imported until a test runs a workflow (the package
``runbook_celery.testing`` imports its harness on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

from .. import testing  # light: the harness is imported on first use

if TYPE_CHECKING:
    from ..client.api import WorkflowSource
    from . import RunResult


class Runbook:
    """What the ``runbook`` fixture gives a test: ``runbook.run(workflow, params)``."""

    def __init__(self) -> None:
        self.results: list[RunResult] = []

    def run(
        self,
        source: WorkflowSource,
        params: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RunResult:
        """Run a workflow in-process to its end (see ``runbook_celery.testing.run_workflow``)."""
        result = testing.run_workflow(source, params, **options)
        self.results.append(result)
        return result


@pytest.fixture
def runbook() -> Runbook:
    """Run workflows in-process: no Redis, no worker; Bash really runs."""
    return Runbook()
