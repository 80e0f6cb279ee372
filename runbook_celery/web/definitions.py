"""The workflows of the ``--definitions`` folder, for the trigger form and ``POST /api/runs``.

Files are re-read when they change (mtime and size), so a definition edited or added
while Flower runs is offered at once, and an invalid one is listed with its problems
instead of being offered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InvalidDefinition, RunbookError
from ..definition.loader import LoadedWorkflow, load_workflow

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Definition:
    """One file of the folder: its workflow when valid, else what is wrong with it."""

    file: Path
    name: str | None = None
    description: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    loaded: LoadedWorkflow | None = None
    problems: list[str] = field(default_factory=list)


class Definitions:
    """The definitions folder, cached per file by modification time and size."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._cache: dict[Path, tuple[tuple[int, int], Definition]] = {}
        self._lock = threading.Lock()

    def all(self) -> list[Definition]:
        """Every workflow file of the folder, by file name; [] without a folder."""
        if self.directory is None:
            return []
        try:
            files = sorted(
                p for p in self.directory.iterdir() if p.suffix in SUFFIXES and p.is_file()
            )
        except OSError as exc:  # the folder went away or became unreadable
            return [Definition(self.directory, problems=[f"{self.directory}: {exc.strerror}"])]
        with self._lock:
            out = [self._load(p) for p in files]
            self._cache = {p: self._cache[p] for p in files if p in self._cache}
        return out

    def find(self, name: str) -> list[Definition]:
        """The valid definitions whose workflow is called ``name`` (normally one)."""
        return [d for d in self.all() if d.name == name and d.loaded is not None]

    def _load(self, path: Path) -> Definition:
        try:
            stat = path.stat()
        except OSError as exc:
            return Definition(path, problems=[f"{path}: {exc.strerror}"])
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            loaded = load_workflow(path)
        except InvalidDefinition as exc:
            found = Definition(path, problems=[p.render() for p in exc.problems])
        except RunbookError as exc:
            found = Definition(path, problems=[str(exc)])
        else:
            wf = loaded.workflow
            found = Definition(path, wf.name, wf.description, dict(wf.params), loaded)
        self._cache[path] = (stamp, found)
        return found
