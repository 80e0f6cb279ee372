"""`scripts/dev.py` works with a system Python the distribution manages (PEP 668).

On Debian or Ubuntu, `python3 scripts/dev.py demo` used to print pip's
`externally-managed-environment` refusal and then a traceback. It now creates the project
virtualenv `.venv` and re-runs itself with that Python; where `python3 -m venv` cannot
work (Debian without python3-venv) it says what to install and exits 2. Inside a
virtualenv (CI) it uses the interpreter it runs under.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", ROOT / "scripts" / "dev.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def system_python(dev, monkeypatch, tmp_path):
    """This interpreter, seen as Debian's: not a virtualenv, EXTERNALLY-MANAGED in its stdlib."""
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use apt\n")
    monkeypatch.setattr(dev.sys, "prefix", dev.sys.base_prefix)
    real_get_path = dev.sysconfig.get_path
    monkeypatch.setattr(
        dev.sysconfig,
        "get_path",
        lambda name, *a, **kw: str(stdlib) if name == "stdlib" else real_get_path(name, *a, **kw),
    )
    return dev


def _fake_python_without_venv(tmp_path: Path) -> Path:
    """An interpreter whose `-m venv` fails as Debian's does without python3-venv."""
    script = tmp_path / "python3"
    script.write_text(
        "#!/bin/sh\n"
        'for last; do :; done\nmkdir -p "$last/bin"\n'  # leaves a half-made virtualenv
        "echo 'The virtual environment was not created successfully because ensurepip is not\n"
        "available.  On Debian/Ubuntu systems, you need to install the python3-venv\n"
        "package using the following command.\n\n    apt install python3.11-venv'\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


def test_an_externally_managed_system_python_needs_the_project_virtualenv(system_python):
    assert system_python.externally_managed()
    assert system_python.needs_project_venv()


def test_inside_a_virtualenv_the_current_interpreter_is_used(dev):
    # this suite runs in a virtualenv, as CI runs `$VENV/bin/python scripts/dev.py test`
    assert dev.in_virtualenv()
    assert not dev.needs_project_venv()


def test_a_python_without_pip_needs_the_project_virtualenv(dev, monkeypatch):
    monkeypatch.setattr(dev.sys, "prefix", dev.sys.base_prefix)
    monkeypatch.setattr(dev, "externally_managed", lambda: False)
    real = dev.importlib.util.find_spec
    monkeypatch.setattr(
        dev.importlib.util, "find_spec", lambda name: None if name == "pip" else real(name)
    )
    assert dev.needs_project_venv()


def test_main_reexecutes_with_the_virtualenvs_python_and_the_same_arguments(
    system_python, monkeypatch, tmp_path
):
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(system_python, "ensure_project_venv", lambda: venv_python)
    seen: list[tuple[str, list[str]]] = []

    def fake_execv(path: Path, argv: list[str]) -> None:
        seen.append((str(path), argv))
        raise SystemExit(0)

    monkeypatch.setattr(system_python.os, "execv", fake_execv)
    with pytest.raises(SystemExit):
        system_python.main(["test", "-m", "not slow", "-q"])
    assert seen == [
        (
            str(venv_python),
            [str(venv_python), str(ROOT / "scripts" / "dev.py"), "test", "-m", "not slow", "-q"],
        )
    ]


def test_without_python3_venv_it_says_what_to_install_and_exits_2(
    system_python, monkeypatch, tmp_path, capsys
):
    venv = tmp_path / ".venv"
    monkeypatch.setattr(system_python, "VENV", venv)
    monkeypatch.setattr(system_python.sys, "executable", str(_fake_python_without_venv(tmp_path)))
    code = system_python.main(["demo"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sudo apt install python3-venv" in err and "Traceback" not in err
    assert "ensurepip is not" in err  # what venv itself said
    assert not venv.exists()  # the half-made virtualenv is gone: the next try starts clean


def test_a_real_virtualenv_is_created_once_and_reused(dev, tmp_path):
    venv = tmp_path / ".venv"
    python = dev.ensure_project_venv(venv)
    assert python == dev.venv_python(venv) and python.exists()
    assert dev.ensure_project_venv(venv) == python  # reused, not made again
    out = subprocess.run(
        [str(python), "-c", "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix]))"],
        capture_output=True,
        text=True,
        check=True,
    )
    prefix, base = json.loads(out.stdout)
    assert Path(prefix) == venv and prefix != base


def test_a_folder_named_venv_that_is_not_one_is_left_alone(dev, tmp_path):
    venv = tmp_path / ".venv"
    (venv / "keep").mkdir(parents=True)
    with pytest.raises(dev.SetupError, match="not a virtualenv"):
        dev.ensure_project_venv(venv)
    assert (venv / "keep").is_dir()


def test_dev_py_runs_as_a_script_under_the_venv(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dev.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "demo" in out.stdout
