"""The work every side does: one Bash per step, and the workflow files runbook-celery runs.

Every side starts one Bash per step that runs ``true``. The floor and the raw-Celery task
run ``bash -c true`` with ``subprocess.run``; runbook-celery runs ``true`` as a step's
command, which its runner executes as ``bash -eo pipefail`` with its guardian wrapper
(the wrapper's cost is part of what runbook-celery is measured for).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

COMMAND = "true"
# a step that reports when it started, from inside the step (Bash 5, no extra process)
PROBE_COMMAND = "echo $EPOCHREALTIME"
PROBE_STEP = 'echo "t=$EPOCHREALTIME" >> "$RUNBOOK_OUTPUT"'


def floor_step(command: str = COMMAND) -> str:
    """One step of the floor: the command run directly, the way the raw-Celery task runs it."""
    proc = subprocess.run(["bash", "-c", command], capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"floor step exited {proc.returncode}")
    return proc.stdout.decode()


def console_script(name: str) -> list[str]:
    """The installed console script next to this interpreter (what a user would run)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", name.replace("-", "_")]


def _yaml(name: str, steps: list[tuple[str, str, list[str]]]) -> str:
    lines = [f"name: {name}", "steps:"]
    for sid, run, needs in steps:
        lines.append(f"  - id: {sid}")
        lines.append(f"    run: {_quote(run)}")
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class WorkflowFiles:
    """Writes each benchmark workflow once, on first use, into ``root``."""

    def __init__(self, root: Path, sizes: Any) -> None:
        self.root = root
        self.sizes = sizes
        root.mkdir(parents=True, exist_ok=True)

    def _file(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        if not path.exists():
            path.write_text(text)
        return path

    def chain(self, m: int) -> Path:
        """M steps, each needing the one before."""
        steps = [(f"s{i}", COMMAND, [f"s{i - 1}"] if i else []) for i in range(m)]
        return self._file(f"chain-{m}", _yaml(f"chain-{m}", steps))

    def fan(self, width: int) -> Path:
        """1 -> W -> 1."""
        branches = [f"b{i}" for i in range(width)]
        steps = [("source", COMMAND, [])]
        steps += [(b, COMMAND, ["source"]) for b in branches]
        steps.append(("join", COMMAND, branches))
        return self._file(f"fan-{width}", _yaml(f"fan-{width}", steps))

    def lanes(self, lanes: int, per: int) -> Path:
        """``lanes`` independent chains of ``per`` steps in one workflow."""
        steps = [
            (f"l{lane}s{i}", COMMAND, [f"l{lane}s{i - 1}"] if i else [])
            for lane in range(lanes)
            for i in range(per)
        ]
        return self._file(f"lanes-{lanes}x{per}", _yaml(f"lanes-{lanes}x{per}", steps))

    def latency(self) -> Path:
        return self._file("latency", _yaml("latency", [("probe", PROBE_STEP, [])]))

    def small(self) -> Path:
        """A small, realistic file for the cold `trigger` measurement."""
        steps = [
            ("fetch", COMMAND, []),
            ("build", COMMAND, ["fetch"]),
            ("ship", COMMAND, ["build"]),
        ]
        return self._file("small", _yaml("small", steps))

    def validate(self) -> Path:
        """A file of ``validate_steps`` steps in lanes of 20 that pass outputs along."""
        n = self.sizes.validate_steps
        per = 20
        steps = []
        for i in range(n):
            lane, pos = divmod(i, per)
            if pos == 0:
                steps.append((f"l{lane}s0", 'echo "v=0" >> "$RUNBOOK_OUTPUT"', []))
            else:
                prev = f"l{lane}s{pos - 1}"
                run = f'echo "v=${{{{ steps.{prev}.outputs.v }}}}1" >> "$RUNBOOK_OUTPUT"'
                steps.append((f"l{lane}s{pos}", run, [prev]))
        return self._file(f"validate-{n}", _yaml(f"validate-{n}", steps))
