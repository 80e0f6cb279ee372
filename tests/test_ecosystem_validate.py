"""`validate` over directories and globs, its summary line, and `--format json` for CI tools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
VALID = "name: ok\nsteps:\n  - id: a\n    run: echo hi\n"
INVALID = (
    "name: bad\n"  # 1
    "steps:\n"  # 2
    "  - id: build\n"  # 3
    "    run: echo\n"  # 4
    "  - id: ship\n"  # 5
    "    needs: [biuld]\n"  # 6
    "    run: echo\n"  # 7
)
BIULD = "steps[1].needs[0]: unknown step 'biuld' (did you mean 'build'?)"


def validate(*args: Path | str) -> Result:
    result = CliRunner().invoke(cli, ["validate", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"validate raised {result.exception!r}\n{result.output}")
    return result


@pytest.fixture
def flows(tmp_path: Path) -> Path:
    """A folder of definitions: two valid (.yaml and .yml), one invalid, one not YAML."""
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yml").write_text(VALID)
    (tmp_path / "c.yaml").write_text(INVALID)
    (tmp_path / "notes.txt").write_text("not a workflow")
    return tmp_path


def test_a_directory_validates_its_yaml_files_and_prints_a_summary(flows: Path):
    result = validate(flows)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{flows / 'a.yaml'}: ok",
        f"{flows / 'b.yml'}: ok",
        "3 files, 1 invalid",
    ]
    assert result.stderr.splitlines() == [f"{flows / 'c.yaml'}:6: {BIULD}"]


def test_a_directory_of_valid_files_exits_0(flows: Path):
    (flows / "c.yaml").unlink()
    result = validate(flows)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "2 files, 0 invalid"
    assert result.stderr == ""


def test_the_shipped_definitions_directory_is_valid():
    result = validate(ROOT / "definitions")
    count = len(list((ROOT / "definitions").glob("*.yaml")))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"{count} files, 0 invalid"


def test_a_quoted_glob_is_expanded_by_validate(flows: Path):
    result = validate(str(flows / "*.yaml"))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"{flows / 'a.yaml'}: ok", "2 files, 1 invalid"]


def test_double_star_globs_reach_into_subdirectories(flows: Path):
    deep = flows / "team" / "nightly"
    deep.mkdir(parents=True)
    (deep / "backup.yaml").write_text(VALID)
    result = validate(str(flows / "**" / "*.yaml"))
    assert f"{deep / 'backup.yaml'}: ok" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1] == "3 files, 1 invalid"


def test_a_glob_that_matches_nothing_is_an_error(tmp_path: Path):
    pattern = str(tmp_path / "*.yaml")
    result = validate(pattern)
    assert result.exit_code == 2
    assert result.stderr == f"{pattern}: no files match this pattern\n"
    assert result.stdout == "1 file, 1 invalid\n"


def test_a_directory_without_workflow_files_is_an_error(tmp_path: Path):
    (tmp_path / "readme.md").write_text("hi")
    result = validate(tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path}: no workflow files (*.yaml, *.yml) in this directory\n"


def test_files_named_explicitly_keep_the_plain_output(flows: Path):
    # Given files listed one by one (the shell expanded any glob), there is no count to add
    result = validate(flows / "a.yaml", flows / "b.yml")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"{flows / 'a.yaml'}: ok", f"{flows / 'b.yml'}: ok"]


def test_a_file_named_twice_is_checked_once(flows: Path):
    result = validate(flows, flows / "a.yaml")
    assert result.stdout.splitlines()[-1] == "3 files, 1 invalid"


def test_an_existing_file_with_glob_characters_in_its_name_is_taken_literally(tmp_path: Path):
    odd = tmp_path / "release[1].yaml"
    odd.write_text(VALID)
    result = validate(odd)
    assert result.exit_code == 0
    assert result.stdout == f"{odd}: ok\n"


# ---------------------------------------------------------------- --format json


def test_json_format_lists_every_file_with_its_problems(flows: Path):
    result = CliRunner().invoke(cli, ["validate", "--format", "json", str(flows)])
    assert result.exit_code == 2
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report == [
        {"file": str(flows / "a.yaml"), "valid": True, "problems": []},
        {"file": str(flows / "b.yml"), "valid": True, "problems": []},
        {
            "file": str(flows / "c.yaml"),
            "valid": False,
            "problems": [
                {
                    "file": str(flows / "c.yaml"),
                    "line": 6,
                    "path": "steps[1].needs[0]",
                    "step": "ship",
                    "message": "unknown step 'biuld' (did you mean 'build'?)",
                }
            ],
        },
    ]


def test_json_format_reports_unmatched_arguments_too(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(cli, ["validate", "--format", "json", str(missing)])
    assert result.exit_code == 2
    (entry,) = json.loads(result.stdout)
    assert entry["file"] == str(missing)
    assert entry["valid"] is False
    assert entry["problems"][0]["message"] == "file not found"
    assert set(entry["problems"][0]) == {"file", "line", "path", "step", "message"}


def test_json_format_through_the_real_entry_point_exits_0_when_all_valid():
    proc = subprocess.run(
        [sys.executable, "-m", "runbook_celery", "validate", "--format", "json", "definitions"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [entry["file"] for entry in report] == [
        str(p.relative_to(ROOT)) for p in sorted((ROOT / "definitions").glob("*.yaml"))
    ]
    assert all(entry["valid"] and entry["problems"] == [] for entry in report)


def test_an_unknown_format_is_a_usage_error(flows: Path):
    result = CliRunner().invoke(cli, ["validate", "--format", "xml", str(flows)])
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.output
