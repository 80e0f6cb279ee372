"""Every dependency in pyproject.toml has a tested range: a lower and an upper bound.

CI installs the newest versions inside these ranges into a fresh virtualenv, so a release
outside them (a new major of PyYAML, pydantic, ...) cannot change behaviour unnoticed; a
dependency without an upper bound would let it in.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^\]]*\])?\s*(?P<spec>[^;]*)(;.*)?$"
)
UPPER = ("<", "<=", "==", "~=", "===")
LOWER = (">", ">=", "==", "~=", "===")


def declared() -> list[tuple[str, str]]:
    """(where, requirement) for the build, runtime and every extra's dependencies."""
    data = tomllib.loads(PYPROJECT.read_text())
    out = [("build-system", r) for r in data["build-system"]["requires"]]
    out += [("dependencies", r) for r in data["project"]["dependencies"]]
    for extra, reqs in data["project"].get("optional-dependencies", {}).items():
        out += [(f"[{extra}]", r) for r in reqs]
    return out


def operators(requirement: str) -> list[str]:
    match = _REQUIREMENT.match(requirement.strip())
    assert match, f"cannot read requirement {requirement!r}"
    clauses = [c.strip() for c in match.group("spec").split(",") if c.strip()]
    return [re.match(r"^(===|==|~=|!=|<=|>=|<|>)", c).group(1) for c in clauses]  # type: ignore[union-attr]


def test_there_are_dependencies_to_check():
    wheres = {where for where, _ in declared()}
    assert {"build-system", "dependencies", "[test]"} <= wheres


@pytest.mark.parametrize(("where", "requirement"), declared())
def test_every_dependency_has_a_lower_and_an_upper_bound(where, requirement):
    ops = operators(requirement)
    assert any(op in UPPER for op in ops), (
        f"{where}: {requirement!r} has no upper bound; write e.g. '>=1.2,<2' (the next "
        "major you have not tested) so a new release cannot break a fresh install"
    )
    assert any(op in LOWER for op in ops), f"{where}: {requirement!r} has no lower bound"


@pytest.mark.parametrize(
    ("requirement", "bounded"),
    [
        ("pyyaml>=6", False),
        ("redis", False),
        ("pyyaml>=6.0.1,<7", True),
        ("celery[redis]>=5.7,<6", True),
        ("pytest~=8.3", True),
    ],
)
def test_the_check_itself_tells_a_range_from_an_open_end(requirement, bounded):
    assert any(op in UPPER for op in operators(requirement)) is bounded
