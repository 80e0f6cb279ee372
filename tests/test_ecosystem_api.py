"""The public Python API is pinned, and both ways of starting the CLI report the version."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

import runbook_celery

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent

# Adding or removing a public name is an API change: update this list on purpose.
PUBLIC_API = [
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


def test_all_is_exactly_the_pinned_public_api():
    assert runbook_celery.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", [n for n in PUBLIC_API if n != "__version__"])
def test_every_public_name_resolves_and_says_what_it_is_for(name: str):
    obj = getattr(runbook_celery, name)
    doc = obj.__doc__ or ""
    assert doc.strip(), f"{name} has no docstring"
    # dataclasses invent a signature as docstring when none is written
    assert not doc.startswith(f"{name}("), f"{name} has only a generated docstring"
    assert inspect.isclass(obj) or callable(obj)


def test_star_import_gives_exactly_the_public_names():
    namespace: dict[str, object] = {}
    exec("from runbook_celery import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC_API)


def test_version_matches_the_installed_distribution():
    assert runbook_celery.__version__ == version("runbook-celery")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )


def test_python_dash_m_prints_the_version():
    proc = _run(sys.executable, "-m", "runbook_celery", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"runbook-celery, version {runbook_celery.__version__}\n"


def test_the_console_script_prints_the_version():
    script = Path(sysconfig.get_path("scripts")) / "runbook-celery"
    assert script.exists(), f"console script not installed at {script}: pip install -e ."
    proc = _run(str(script), "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"runbook-celery, version {runbook_celery.__version__}\n"
