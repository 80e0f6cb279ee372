"""Every example in the README runs as pasted.

YAML blocks are validated as workflow files; the shell blocks are run by Bash and the
Python blocks by Python, against real Redis and a real worker; the README's two commands
are run as CI runs them. A README example that cannot run as pasted (the old "Definition
format" example named a `scripts/test.sh` that does not exist) fails here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUEUE, ROOT, WorkerProcess

from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.plan.compile import build_snapshot

pytestmark = pytest.mark.timeout(300)

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", README, flags=re.M | re.S)
VENV_BIN = str(Path(sys.executable).parent)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCKS if kind == lang]


def dev_commands_block() -> str:
    (block,) = [b for b in blocks("bash") if "scripts/dev.py" in b]
    return block


def test_every_code_block_is_one_this_file_runs():
    assert {kind for kind, _ in BLOCKS} == {"bash", "yaml", "python"}
    assert len(blocks("bash")) == 2 and len(blocks("python")) == 1 and len(blocks("yaml")) >= 3


def test_it_opens_with_what_it_is_then_the_two_commands():
    intro, rest = README.split("\n## ", 1)
    assert "YAML" in intro and "Bash" in intro and "Celery" in intro and "```" not in intro
    assert rest.startswith("Try it\n")
    commands = [ln.split("#")[0].strip() for ln in dev_commands_block().splitlines()]
    assert commands == ["python3 scripts/dev.py demo", "python3 scripts/dev.py test"]


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_each_yaml_example_is_a_valid_workflow_that_can_be_triggered(index: int, tmp_path):
    # in a folder of its own, as a user pasting it would: it may not lean on repo files
    loaded = load_workflow_text(
        blocks("yaml")[index], file=f"README yaml {index + 1}", base_dir=tmp_path
    )
    build_snapshot(loaded)  # what `trigger` freezes: params resolved, script files read


def test_the_readme_links_every_docs_page_and_every_link_resolves():
    links = set(re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README))
    local = {link for link in links if not link.startswith(("http://", "https://"))}
    missing = sorted(link for link in local if not (ROOT / link).exists())
    assert not missing, missing
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= local, f"not linked from the README: {sorted(pages - local)}"


def test_the_behaviour_moved_to_docs_reliability_is_what_its_generator_writes():
    path = ROOT / "scripts" / "reliability_report.py"
    spec = importlib.util.spec_from_file_location("reliability_report", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    assert module.BEHAVIOUR in (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")


def _run_bash(script: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a pasted block, this virtualenv's commands first on PATH (`. .venv/bin/activate`)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # anything the block left behind (a worker it started) goes with its session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_your_first_workflow_runs_as_pasted(redis_client, tmp_path):
    (block,) = [b for b in blocks("bash") if "scripts/dev.py" not in b]
    result = _run_bash(block, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shout | HELLO YOU" in result.stdout
    assert '"greeting": "hello you"' in result.stdout  # the status --json record
    assert "no worker consumes" not in result.stderr


@pytest.mark.slow
def test_the_python_example_runs_against_a_real_worker(worker):
    (block,) = blocks("python")
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("succeeded {'summary': ")


@pytest.mark.slow
def test_the_demo_command_runs_on_its_own_queue_and_shows_the_steps_output_and_outputs(
    redis_client,
):
    # Another worker of our app answers, on another queue: the demo used to take it for its
    # own ("a worker is already running; using it") and wait forever for its steps.
    other = WorkerProcess("demo-other", queues=f"{QUEUE}-other", concurrency=1)
    try:
        result = subprocess.run(
            [sys.executable, "scripts/dev.py", "demo"],  # as CI runs the README's commands
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "RUNBOOK_QUEUE": f"{QUEUE}-nobody"},
        )
    finally:
        other.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "left   | left saw: hello from top" in result.stdout
    assert "bottom.summary = left:hello from top + right:hello from top" in result.stdout
    assert "starting a worker on the demo's own queue runbook-demo-" in result.stderr


@pytest.mark.slow
def test_the_test_command_runs_pytest(redis_client):
    # the whole suite is what CI runs through this command (tests/test_ci.py holds it to
    # that); here, one file of it, so that the suite does not run itself
    result = subprocess.run(
        [sys.executable, "scripts/dev.py", "test", "tests/test_ci.py", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)
