"""`runbook-celery validate FILE...`: exit 0 if valid, 2 if not; one `FILE:LINE:` per problem."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DIAMOND = ROOT / "definitions" / "diamond.yaml"

VALID = "name: ok\nsteps:\n  - id: a\n    run: echo hi\n"
INVALID = (
    "name: bad\n"  # 1
    "steps:\n"  # 2
    "  - id: build\n"  # 3
    "    run: echo\n"  # 4
    "  - id: ship\n"  # 5
    "    needs: [biuld]\n"  # 6
    "    run: echo\n"  # 7
    "  - id: ship\n"  # 8
    "    run: echo\n"  # 9
)


def validate(*paths: Path | str):  # type: ignore[no-untyped-def]
    """Run `validate` in-process; never let an exception escape as anything but an exit code."""
    result = CliRunner().invoke(cli, ["validate", *map(str, paths)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"validate raised {result.exception!r}\n{result.output}")
    return result


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "runbook_celery", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=os.environ.copy(),
        check=False,
    )


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return _write


def test_a_valid_file_exits_0_and_says_ok(write):
    path = write("ok.yaml", VALID)
    result = validate(path)
    assert result.exit_code == 0
    assert result.stdout == f"{path}: ok\n"
    assert result.stderr == ""


def test_an_invalid_file_exits_2_with_one_file_line_message_per_problem(write):
    path = write("bad.yaml", INVALID)
    result = validate(path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:6: steps[1].needs[0]: unknown step 'biuld' (did you mean 'build'?)",
        f"{path}:8: steps[2].id: duplicate step id 'ship' (first at steps[1])",
    ]


def test_valid_and_invalid_files_together_exit_2_and_report_each(write):
    good = write("good.yaml", VALID)
    bad = write("bad.yaml", INVALID)
    result = validate(good, bad, DIAMOND)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"{good}: ok", f"{DIAMOND}: ok"]
    assert all(line.startswith(f"{bad}:") for line in result.stderr.splitlines())


def test_every_problem_line_has_the_file_line_path_message_shape(write):
    path = write("bad.yaml", INVALID)
    shape = re.compile(rf"^{re.escape(str(path))}:\d+: [\w\[\].-]+: \S.*$")
    for line in validate(path).stderr.splitlines():
        assert shape.match(line), line


def test_a_missing_file_exits_2(tmp_path):
    result = validate(tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path / 'nope.yaml'}: file not found\n"


def test_a_directory_without_workflow_files_exits_2(tmp_path):
    result = validate(tmp_path)
    assert result.exit_code == 2
    assert result.stderr == f"{tmp_path}: no workflow files (*.yaml, *.yml) in this directory\n"


def test_no_files_is_a_usage_error():
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 2
    assert "Missing argument 'FILES...'" in result.output


# ---------------------------------------------------------------- the real entry point


def test_the_entry_point_exits_0_for_the_shipped_definitions():
    definitions = sorted(str(p) for p in (ROOT / "definitions").glob("*.yaml"))
    proc = run_cli("validate", *definitions)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: ok" for p in definitions]


def test_the_entry_point_exits_2_with_messages_on_stderr(write):
    path = write("bad.yaml", INVALID)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[0] == (
        f"{path}:6: steps[1].needs[0]: unknown step 'biuld' (did you mean 'build'?)"
    )


def test_hostile_files_never_produce_a_traceback(write, tmp_path):
    # Given files built to break parsers, in one run of the real command
    laughs = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    hostile = [
        write("bomb.yaml", "\n".join(laughs) + "\n"),
        write("deep.yaml", "[" * 100_000 + "]" * 100_000),
        write("deep-map.yaml", "a: " + "{a: " * 10_000 + "1" + "}" * 10_000),
        write("garbage.yaml", bytes(range(256)) * 16),
        write("latin1.yaml", "name: caf\xe9\n".encode("latin-1")),
        write("nul.yaml", b"name: x\x00\n"),
        write("control.yaml", "name: x\x1b[31m\n"),
        write("empty.yaml", ""),
        write(
            "expr.yaml", "name: t\nsteps:\n  - id: a\n    run: echo ${{ " + "!" * 50_000 + "}}\n"
        ),
        write("tags.yaml", "name: !!python/object/apply:os.system ['touch PWNED']\n"),
    ]
    # When they are validated
    proc = run_cli("validate", *map(str, hostile))
    # Then each gets a one-line FILE:LINE: message, exit code 2, and no traceback
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    reported = [line.split(":", 1)[0] for line in proc.stderr.splitlines()]
    assert reported == [str(p) for p in hostile]
    for line in proc.stderr.splitlines():
        assert re.match(r"^[^:]+:\d+: ", line), line
    assert not (tmp_path / "PWNED").exists()
    assert not (ROOT / "PWNED").exists()


def test_a_file_over_the_size_limit_exits_2_without_reading_it(tmp_path):
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(20 * 1024 * 1024)  # 20 MB, sparse: the size alone must refuse it
    proc = run_cli("validate", str(big))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{big}: file is {20 * 1024 * 1024} bytes, larger than the")
    assert "Traceback" not in proc.stderr
