"""Which workflow files command-line arguments name (files, directories, quoted globs), and
checking them: what ``validate`` reads, kept apart from the commands so that it loads the
definition layer only."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InvalidDefinition, Problem
from ..definition.loader import load_workflow
from ..definition.safefiles import list_definitions
from ..plan.lint import lint_workflow


@dataclass(frozen=True)
class Expansion:
    """What command-line arguments name, in their order: files, or why an argument named none."""

    items: list[Path | Problem]
    expanded: bool  # a directory or a pattern was given, so the file count is news to the user


def workflow_files_in(directory: Path) -> list[Path | Problem]:
    """Its workflow files; a symlink out of it, a FIFO or a device is reported, not read."""
    listing = list_definitions(directory)
    refused: list[Path | Problem] = [Problem(str(p), None, why) for p, why in listing.refused]
    return sorted([*listing.files, *refused], key=lambda x: getattr(x, "file", str(x)))


def expand_workflow_paths(args: Iterable[Path | str]) -> Expansion:
    """Files as given; directories as their ``*.yaml``/``*.yml``; quoted globs (``**`` too).

    An argument that exists is never treated as a pattern, and one that neither exists nor
    contains ``*``, ``?`` or ``[`` is passed on unchanged so loading reports it as missing.
    A file named twice is checked once.
    """
    items: list[Path | Problem] = []
    expanded = False
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            expanded = True
            found = workflow_files_in(path)
            items.extend(found)
            if not found:
                message = "no workflow files (*.yaml, *.yml) in this directory"
                items.append(Problem(str(path), None, message))
        elif not path.exists() and glob.has_magic(str(arg)):
            expanded = True
            matches = [Path(m) for m in sorted(glob.glob(str(arg), recursive=True))]
            for match in matches:
                items.extend(workflow_files_in(match) if match.is_dir() else [match])
            if not matches:
                items.append(Problem(str(arg), None, "no files match this pattern"))
        else:
            items.append(path)
    return Expansion(list(dict.fromkeys(items)), expanded)


def check_workflows(
    items: Iterable[Path | Problem], lint: bool = False
) -> Iterator[tuple[str, list[Problem]]]:
    """Each file (or argument that named none) with its problems, none if valid; lazily.

    With ``lint``, a valid file's Bash is also run through shellcheck (``lint.py``).
    """

    for item in items:
        if isinstance(item, Problem):
            yield item.file, [item]
            continue
        try:
            loaded = load_workflow(item)
        except InvalidDefinition as exc:
            yield str(item), list(exc.problems)
        else:
            yield str(item), lint_workflow(loaded) if lint else []
