"""Files a definition makes us read stay in its folder and are regular text files.

Each hostile ``script:`` of issue 13 is refused by ``validate`` and by ``trigger`` with a
FILE:LINE message saying what to do, exit 2, and no run; a FIFO never makes us wait.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli

from runbook_celery.core.errors import InvalidDefinition
from runbook_celery.definition.loader import load_workflow
from runbook_celery.definition.safefiles import Refused, list_definitions, read_script

Setup = Callable[[Path], str]  # prepares the folder, returns what ``script:`` says


def _outside(folder: Path) -> str:
    (folder.parent / "outside.sh").write_text("echo outside\n")
    return "../outside.sh"


def _symlink_out(folder: Path) -> str:
    (folder.parent / "target.sh").write_text("echo target\n")
    (folder / "link.sh").symlink_to(folder.parent / "target.sh")
    return "link.sh"


def _symlinked_dir_out(folder: Path) -> str:
    (folder.parent / "lib").mkdir()
    (folder.parent / "lib" / "x.sh").write_text("echo x\n")
    (folder / "lib").symlink_to(folder.parent / "lib")
    return "lib/x.sh"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "pipe.sh")
    return "pipe.sh"


def _nul(folder: Path) -> str:
    (folder / "nul.sh").write_bytes(b"echo a\necho \x00b\n")
    return "nul.sh"


def _directory(folder: Path) -> str:
    (folder / "dir.sh").mkdir()
    return "dir.sh"


def _too_large(folder: Path) -> str:
    with (folder / "big.sh").open("wb") as fh:
        fh.truncate(3 * 1024 * 1024)  # sparse, over the 2 MiB default
    return "big.sh"


def _not_utf8(folder: Path) -> str:
    (folder / "latin1.sh").write_bytes(b"echo caf\xe9\n")
    return "latin1.sh"


def _symlink_to_proc(folder: Path) -> str:
    (folder / "env.sh").symlink_to("/proc/self/environ")
    return "env.sh"


# name: (what script: names, a fragment of the message)
HOSTILE: dict[str, tuple[Setup, str]] = {
    "dot-dot to /etc/passwd": (lambda _f: "../../../../../../../../etc/passwd", "outside"),
    "dot-dot out of the folder": (_outside, "outside the workflow's folder"),
    "symlink out of the folder": (_symlink_out, "outside the workflow's folder"),
    "symlinked directory out": (_symlinked_dir_out, "outside the workflow's folder"),
    "absolute /proc/self/environ": (lambda _f: "/proc/self/environ", "pseudo-file"),
    "symlink to /proc/self/environ": (_symlink_to_proc, "outside"),
    "absolute /dev/zero": (lambda _f: "/dev/zero", "pseudo-file"),
    "FIFO": (_fifo, "a FIFO (named pipe), not a regular file"),
    "NUL byte": (_nul, "contains a NUL byte"),
    "directory": (_directory, "a directory, not a regular file"),
    "over the size cap": (_too_large, "RUNBOOK_MAX_FILE_BYTES"),
    "not UTF-8": (_not_utf8, "save it as UTF-8"),
    "missing": (lambda _f: "nope.sh", "file not found"),
}

WORKFLOW = """name: hostile
steps:
  - id: ok
    run: echo fine
  - id: bad
    script: {script}
"""


def _write(tmp_path: Path, setup: Setup) -> Path:
    folder = tmp_path / "flows"
    folder.mkdir()
    script = setup(folder)
    wf = folder / "wf.yaml"
    wf.write_text(WORKFLOW.format(script=script))
    return wf


@pytest.mark.timeout(20)  # a FIFO that were opened for reading would block forever
@pytest.mark.parametrize("case", HOSTILE)
def test_validate_refuses_a_hostile_script_at_its_line(tmp_path: Path, case: str):
    setup, fragment = HOSTILE[case]
    wf = _write(tmp_path, setup)
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(wf)
    [problem] = info.value.problems
    assert (problem.file, problem.line, problem.path) == (str(wf), 6, "steps[1].script")
    assert fragment in problem.message
    proc = run_cli("validate", str(wf))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{wf}:6: steps[1].script: script ")
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


def test_a_nul_byte_is_reported_at_its_line_in_the_script(tmp_path: Path):
    wf = _write(tmp_path, _nul)
    with pytest.raises(InvalidDefinition) as info:
        load_workflow(wf)
    assert "script 'nul.sh:2': contains a NUL byte" in info.value.problems[0].message


@pytest.mark.parametrize(
    "where", ["sub/deploy.sh", "./deploy.sh", "sub/../deploy.sh", "inner-link.sh"]
)
def test_scripts_inside_the_folder_are_read(tmp_path: Path, where: str):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deploy.sh").write_text("echo sub\n")
    (tmp_path / "deploy.sh").write_text("echo top\n")
    (tmp_path / "inner-link.sh").symlink_to(tmp_path / "sub" / "deploy.sh")
    assert read_script(where, tmp_path, max_bytes=1000).startswith("echo ")


def test_an_absolute_path_named_explicitly_may_live_elsewhere(tmp_path: Path):
    elsewhere = tmp_path / "shared" / "tool.sh"
    elsewhere.parent.mkdir()
    elsewhere.write_text("echo shared\n")
    (tmp_path / "flows").mkdir()
    assert read_script(str(elsewhere), tmp_path / "flows", max_bytes=1000) == "echo shared\n"


def test_a_file_swapped_for_a_symlink_after_the_check_is_refused(tmp_path: Path, monkeypatch):
    """The path is resolved, then opened: the open refuses a symlink put in between."""
    (tmp_path / "flows").mkdir()
    script = tmp_path / "flows" / "s.sh"
    script.write_text("echo mine\n")
    (tmp_path / "secret").write_text("theirs\n")
    real_realpath = os.path.realpath

    def swap_after_resolving(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        resolved = real_realpath(path, *args, **kwargs)
        if resolved == str(script) and not script.is_symlink():
            script.unlink()
            script.symlink_to(tmp_path / "secret")
        return resolved

    monkeypatch.setattr(os.path, "realpath", swap_after_resolving)
    with pytest.raises(Refused):
        read_script("s.sh", tmp_path / "flows", max_bytes=1000)


@pytest.mark.timeout(20)
def test_a_definitions_folder_lists_no_symlink_out_and_no_fifo(tmp_path: Path):
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "good.yaml").write_text("name: good\nsteps: [{id: a, run: 'true'}]\n")
    (folder / "inner.yml").symlink_to(folder / "good.yaml")
    (tmp_path / "foreign.yaml").write_text("name: foreign\nsteps: [{id: a, run: 'true'}]\n")
    (folder / "out.yaml").symlink_to(tmp_path / "foreign.yaml")
    os.mkfifo(folder / "pipe.yaml")
    listing = list_definitions(folder)
    assert [p.name for p in listing.files] == ["good.yaml", "inner.yml"]
    refused = {p.name: why for p, why in listing.refused}
    assert set(refused) == {"out.yaml", "pipe.yaml"}
    assert "outside the folder" in refused["out.yaml"]
    assert "FIFO" in refused["pipe.yaml"]
    proc = run_cli("validate", str(folder))
    assert proc.returncode == 2
    assert f"{folder / 'out.yaml'}: symlink to {tmp_path / 'foreign.yaml'}" in proc.stderr
    assert f"{folder / 'pipe.yaml'}: is a FIFO" in proc.stderr


@pytest.mark.timeout(20)
def test_validate_names_a_fifo_workflow_file_without_waiting(tmp_path: Path):
    os.mkfifo(tmp_path / "wf.yaml")
    proc = run_cli("validate", str(tmp_path / "wf.yaml"), timeout=15)
    assert proc.returncode == 2
    assert "is a FIFO (named pipe), not a regular file" in proc.stderr


@pytest.mark.timeout(20)
def test_beat_schedules_no_file_from_outside_its_folder(tmp_path: Path):
    from runbook_celery.client.schedule import read_definitions

    folder = tmp_path / "defs"
    folder.mkdir()
    every = "schedule: '@every 1h'\nsteps: [{id: a, run: 'true'}]\n"
    (folder / "mine.yaml").write_text(f"name: mine\n{every}")
    (tmp_path / "foreign.yaml").write_text(f"name: foreign\n{every}")
    (folder / "out.yaml").symlink_to(tmp_path / "foreign.yaml")
    os.mkfifo(folder / "pipe.yaml")
    problems: list[object] = []
    found = read_definitions(folder, on_problem=problems.append)
    assert [d.workflow for d in found] == ["mine"]
    assert len(problems) == 2


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["dot-dot to /etc/passwd", "FIFO", "absolute /proc/self/environ"])
def test_trigger_refuses_with_exit_2_and_starts_no_run(tmp_path: Path, case: str, worker, store):
    setup, fragment = HOSTILE[case]
    wf = _write(tmp_path, setup)
    before = store.r.zcard(store.keys.runs_index)
    proc = run_cli("trigger", str(wf), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"{wf}:6: steps[1].script: script ")
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert store.r.zcard(store.keys.runs_index) == before
