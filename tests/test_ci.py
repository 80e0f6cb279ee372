"""CI tests what a fresh install gets: fresh virtualenvs, newest and lowest versions in range.

``.ci/run`` is the CI entry point and ``scripts/dev.py test`` the README's test command;
these tests hold them to that, so a later edit cannot quietly go back to testing whatever
the machine happens to have installed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = (ROOT / ".ci" / "run").read_text()


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(script: str) -> list[str]:
    """The script's command lines, without comments."""
    return [
        ln.strip() for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def test_ci_installs_the_newest_versions_in_range_into_a_fresh_virtualenv():
    lines = _commands(CI_RUN)
    assert any(re.search(r"mktemp -d", ln) for ln in lines)
    assert 'python3 -m venv "$WORK/newest"' in lines
    install = [ln for ln in lines if ln.startswith('"$PY" -m pip install')]
    assert install, "no install into the fresh virtualenv"
    assert "--upgrade --upgrade-strategy eager" in install[0]
    assert '-e ".[test]"' in install[0]


def test_ci_runs_the_readmes_test_command_with_the_virtualenvs_python():
    lines = _commands(CI_RUN)
    assert '"$PY" scripts/dev.py test' in lines
    assert any(ln.startswith('"$LOW" scripts/dev.py test') for ln in lines)
    # nothing installs into, or tests with, the system interpreter
    assert not [ln for ln in lines if re.match(r"python3 (-m pip|scripts/dev.py)", ln)]


def test_ci_still_provides_every_service_the_suite_needs():
    needs = ("redis-server", "ensure_rabbitmq.sh", "chromium", "graphviz", "mermaid")
    for needed in (*needs, "iproute2", "iptables"):
        assert needed in CI_RUN, needed


def test_ci_checks_types_with_mypy_strict_before_the_tests():
    lines = _commands(CI_RUN)
    assert '"$PY" -m mypy' in lines  # the newest virtualenv's mypy, from the test extra
    assert lines.index('"$PY" -m mypy') < lines.index('"$PY" scripts/dev.py test')
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["mypy"]["strict"] is True
    assert pyproject["tool"]["mypy"]["packages"] == ["runbook_celery"]
    test_extra = pyproject["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("mypy>=") for r in test_extra)
    assert any(r.startswith("celery-types>=") for r in test_extra)


def test_ci_checks_the_layers_contract_before_the_tests():
    lines = _commands(CI_RUN)
    lint = '"$WORK/newest/bin/lint-imports" --no-cache'  # the newest venv's, from the test extra
    assert lint in lines
    assert lines.index(lint) < lines.index('"$PY" scripts/dev.py test')
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["importlinter"]["root_package"] == "runbook_celery"
    test_extra = pyproject["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("import-linter>=") for r in test_extra)


def test_the_lowest_constraints_pin_every_direct_dependency_to_its_lower_bound():
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "lowest_constraints.py"), "test"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    assert len(out) == len(declared)
    for requirement, pin in zip(declared, out, strict=True):
        name, lower = pin.split("==")
        assert requirement.startswith(name) and f">={lower}" in requirement, (requirement, pin)


def test_dev_py_test_installs_and_runs_pytest_with_the_interpreter_it_runs_under(monkeypatch):
    dev = _module(ROOT / "scripts" / "dev.py")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(dev.subprocess, "run", fake_run)
    monkeypatch.setattr(dev, "redis_answers", lambda host, port: True)
    monkeypatch.setattr(sys, "executable", "/some/venv/bin/python")
    args = dev.argparse.Namespace(pytest_args=["-q"])
    assert dev.test(args) == 0
    assert [c[:3] for c in calls] == [
        ["/some/venv/bin/python", "-m", "pip"],
        ["/some/venv/bin/python", "-m", "pytest"],
    ]


@pytest.mark.parametrize("script", [".ci/run", "scripts/ensure_rabbitmq.sh"])
def test_ci_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True, timeout=30)


def _dev_test_lines() -> list[list[str]]:
    """Each `scripts/dev.py test ...` command in .ci/run, as the argument list dev.py receives."""
    import shlex

    lines = []
    for cmd in _commands(CI_RUN):
        if "scripts/dev.py" not in cmd:
            continue
        words = shlex.split(cmd)
        if "scripts/dev.py" in words:
            lines.append(words[words.index("scripts/dev.py") + 1 :])
    return lines


def test_every_dev_py_command_in_ci_parses_and_hands_its_options_to_pytest():
    dev = _module(ROOT / "scripts" / "dev.py")
    lines = _dev_test_lines()
    assert len(lines) >= 2
    for argv in lines:
        args = dev.parse_args(argv)
        assert args.command == "test"
        assert args.pytest_args == argv[1:]


@pytest.mark.parametrize(
    "argv",
    [["test", "-m", "not slow", "-q"], ["test", "tests/test_ci.py", "-k", "x"], ["test", "-x"]],
)
def test_dev_py_test_passes_options_through_in_order(argv):
    dev = _module(ROOT / "scripts" / "dev.py")
    assert dev.parse_args(argv).pytest_args == argv[1:]
