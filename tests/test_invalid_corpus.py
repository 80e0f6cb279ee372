"""A corpus of broken definitions: each one fails `validate` with exit 2 at the right line.

``tests/data/invalid/expected.json`` maps each file to the line its first relevant problem
must be reported on and a fragment of that problem's message. Files too large to commit
(a 20 MB file, a 10,000-level nesting, an alias bomb) are generated into ``tmp_path``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from runbook_celery.cli import cli

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "data" / "invalid"
EXPECTED: dict[str, dict[str, object]] = json.loads((CORPUS / "expected.json").read_text())
PER_FILE_SECONDS = 1.0


def check_rejected(path: Path, line: int | None, fragment: str) -> None:
    """Validate ``path`` in-process and hold the result to the corpus contract."""
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["validate", str(path)])
    elapsed = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"validate raised {result.exception!r} on {path.name}")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "no problem reported"
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    for reported in lines:
        assert reported.startswith(f"{path}:"), reported
    matching = [r for r in lines if r.startswith(prefix) and fragment in r]
    assert matching, f"expected {prefix!r}...{fragment!r}, got:\n" + "\n".join(lines)
    assert elapsed < PER_FILE_SECONDS, f"{path.name} took {elapsed:.2f}s"


def test_the_corpus_is_big_enough_and_every_file_has_an_expectation():
    files = {p.name for p in CORPUS.iterdir() if p.name != "expected.json"}
    assert len(files) >= 40
    assert files == set(EXPECTED)
    for name, expectation in EXPECTED.items():
        assert isinstance(expectation["line"], int), name
        assert expectation["fragment"], name
        assert expectation["what"], name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_corpus_file_is_rejected_at_its_line(name):
    expectation = EXPECTED[name]
    check_rejected(CORPUS / name, expectation["line"], str(expectation["fragment"]))  # type: ignore[arg-type]


def test_the_real_command_rejects_the_whole_corpus_in_one_run():
    # Given every corpus file on one command line of the installed entry point
    paths = [CORPUS / name for name in sorted(EXPECTED)]
    proc = subprocess.run(
        [sys.executable, "-m", "runbook_celery", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    # Then it exits 2, prints nothing as ok, never a traceback, and names each file's line
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    reported = proc.stderr.splitlines()
    for path in paths:
        expectation = EXPECTED[path.name]
        prefix = f"{path}:{expectation['line']}: "
        assert any(r.startswith(prefix) and str(expectation["fragment"]) in r for r in reported), (
            path.name
        )


# ---------------------------------------------------------------- generated, too big to commit


def test_a_20_mb_file_is_rejected_by_its_size(tmp_path):
    path = tmp_path / "twenty-megabytes.yaml"
    chunk = b"# " + b"x" * 1021 + b"\n"
    with path.open("wb") as fh:
        for _ in range(20 * 1024):
            fh.write(chunk)
    check_rejected(path, None, f"file is {20 * 1024 * 1024} bytes, larger than the")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("flow", "[" * 10_000 + "]" * 10_000),
        ("mapping", "name: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"),
        ("block", "name: deep\nsteps:\n  " + "- " * 10_000 + "x\n"),
    ],
)
def test_a_file_nested_10000_levels_is_rejected(tmp_path, kind, text):
    path = tmp_path / f"deep-{kind}.yaml"
    path.write_text(text)
    line = 3 if kind == "block" else 1
    check_rejected(path, line, "nested deeper than 100 levels")


def test_an_alias_bomb_is_rejected(tmp_path):
    lines = ["name: lol", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "billion-laughs.yaml"
    path.write_text("\n".join(lines) + "\nsteps: *l9\n")
    started = time.perf_counter()
    # anchors are expanded as they are defined, so the limit trips at l5 (9**6 strings)
    check_rejected(path, 7, "l5[0]: document expands to more than 100000 values (alias bomb?)")
    assert time.perf_counter() - started < 0.5
