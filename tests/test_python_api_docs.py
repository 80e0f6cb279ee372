"""Every example in docs/python-api.md runs as written: the user test of the testing
section with no Redis at all, the others against real Redis and a real worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DOC = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", DOC, flags=re.M | re.S)
PYTHON = [body for kind, body in BLOCKS if kind == "python"]
USER_TESTS = [b for b in PYTHON if "def test_" in b]
AGAINST_A_WORKER = [b for b in PYTHON if b not in USER_TESTS]


def test_the_doc_has_its_examples():
    assert len(USER_TESTS) == 1 and len(AGAINST_A_WORKER) >= 4
    assert sum(kind == "yaml" for kind, _ in BLOCKS) == 1


@pytest.mark.timeout(60)
def test_the_example_user_test_passes_with_no_redis_and_no_worker(tmp_path: Path):
    (yaml_block,) = [body for kind, body in BLOCKS if kind == "yaml"]
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "deploy.yaml").write_text(yaml_block)
    (tmp_path / "tests" / "test_deploy.py").write_text(USER_TESTS[0])
    nowhere = "redis://127.0.0.1:1/0"
    env = {**os.environ, "RUNBOOK_REDIS_URL": nowhere, "RUNBOOK_BROKER_URL": nowhere}
    env["PYTEST_ADDOPTS"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(len(AGAINST_A_WORKER)))
def test_each_example_runs_against_a_worker(index: int, worker, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name definitions/ relative to the checkout
    exec(compile(AGAINST_A_WORKER[index], f"docs/python-api.md[{index}]", "exec"), {})
