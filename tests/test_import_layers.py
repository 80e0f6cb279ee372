"""The package's layers, as pyproject.toml's [tool.importlinter] contracts state them, hold.

``lint-imports`` runs in ``.ci/run`` next to ruff and mypy; this test runs it too, so a
module that imports a layer above its own fails the suite where it is written, and the
contracts themselves cannot quietly lose a layer.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = [
    "runbook_celery.cli | runbook_celery.testing",
    "runbook_celery.web",
    "runbook_celery.client",
    "runbook_celery.engine",
    "runbook_celery.store",
    "runbook_celery.plan",
    "runbook_celery.definition",
    "runbook_celery.core",
]


def test_the_layers_contract_names_every_layer_top_down():
    layers = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    assert len(layers) == 1
    assert layers[0]["layers"] == LAYERS


def test_every_module_of_the_package_is_in_a_layer():
    """A module outside every layer is checked by no contract: only the package's own
    entry points and the documented public re-exports (events, loader) may sit at its root."""
    package = ROOT / "runbook_celery"
    tops = {p.parent.name for p in package.glob("*/__init__.py")}
    tops |= {p.stem for p in package.glob("*.py")}
    parts = [part.strip() for layer in LAYERS for part in layer.split("|")]
    named = {part.removeprefix("runbook_celery.") for part in parts}
    assert tops - named == {"__init__", "__main__", "events", "loader"}


def test_the_pure_layers_import_neither_celery_nor_redis():
    forbidden = [c for c in CONFIG["contracts"] if c["type"] == "forbidden"]
    pure = next(c for c in forbidden if "runbook_celery.definition" in c["source_modules"])
    assert {"runbook_celery.definition", "runbook_celery.plan", "runbook_celery.core"} <= set(
        pure["source_modules"]
    )
    assert {"celery", "kombu", "redis"} <= set(pure["forbidden_modules"])


def test_lint_imports_keeps_every_contract():
    lint = Path(sys.executable).with_name("lint-imports")  # the test extra's, in this venv
    res = subprocess.run(
        [str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=240
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout
