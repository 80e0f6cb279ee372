"""A client process runs no worker code: importing the operator's controls (the CLI's
``approve``, ``retry``, ``skip`` ...) registers no task and connects no worker signal.

``finish_outside`` (an operator's decision recorded as a step's end) lives with the step's
stages (``engine/step/delivery.py``), which have no import side effects; the step task
module (``engine/tasks.py``) and the worker hooks are imported by workers only.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

WORKER_ONLY = ("runbook_celery.engine.tasks", "runbook_celery.engine.workerhooks")


@pytest.mark.parametrize(
    "module",
    ["runbook_celery.client.control", "runbook_celery.client.api", "runbook_celery.client"],
)
def test_importing_a_client_module_loads_no_worker_only_module(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"loaded = [m for m in {WORKER_ONLY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_the_step_tasks_are_still_registered_where_the_worker_loads_them() -> None:
    """The app names the task module for workers to import (``include``); importing it
    registers the four tasks under their names, which messages in flight carry."""
    code = (
        "from runbook_celery.engine.app import app\n"
        "import runbook_celery.engine.tasks\n"
        "names = {'runbook.step', 'runbook.fan_in', 'runbook.run_timeout',"
        " 'runbook.approval_timeout'}\n"
        "assert names <= set(app.tasks), sorted(app.tasks)\n"
        "assert 'runbook_celery.engine.tasks' in app.conf.include\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
