#!/usr/bin/env python3
"""Print pip constraints that pin each direct dependency to its lower bound.

CI installs with these to test the low end of every range in pyproject.toml, so a lower
bound is a tested claim, not a guess. Standard library only: it runs before any install.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_LOWER = re.compile(r">=\s*([^,;\s]+)")


def lowest(requirements: list[str]) -> list[str]:
    """``name==lower`` for every requirement with a ``>=`` bound."""
    pins = []
    for requirement in requirements:
        name, lower = _NAME.match(requirement), _LOWER.search(requirement)
        if name is None or lower is None:
            sys.exit(f"no lower bound to pin in {requirement!r}")
        pins.append(f"{name.group(1)}=={lower.group(1)}")
    return pins


def main(extras: list[str]) -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    print("\n".join(lowest(requirements)))


if __name__ == "__main__":
    main(sys.argv[1:])
