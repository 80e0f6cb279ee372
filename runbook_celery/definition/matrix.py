"""A step's ``matrix:`` expanded into its combinations, by GitHub Actions' rules.

Pure (no I/O), so validation and the worker expand a snapshot's matrix identically:

1. the cross product of every key except ``include`` and ``exclude``;
2. minus each combination that matches an ``exclude`` entry (every key the entry names
   has that value; an entry may name only some keys);
3. then each ``include`` entry is merged into every combination it does not contradict on an
   *original* matrix key (values added by an earlier ``include`` may be overwritten); an
   entry that fits no combination becomes a combination of its own. A matrix of only
   ``include`` entries is that list.

Values are scalars or objects (``${{ matrix.os.name }}``); keys may contain ``-``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

SPECIAL = ("include", "exclude")


class TooManyCombinations(ValueError):
    """More combinations than a step may have instances."""

    def __init__(self, count: int, cap: int) -> None:
        super().__init__(f"matrix has {count:,} combinations")
        self.count = count
        self.cap = cap


def axes(matrix: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
    """The keys that span the cross product (all but ``include``/``exclude``)."""
    return {k: v for k, v in matrix.items() if k not in SPECIAL}


def keys(matrix: Mapping[str, list[Any]]) -> list[str]:
    """Every key an instance may have: the axes, then keys only ``include`` adds."""
    out = list(axes(matrix))
    for entry in matrix.get("include", []):
        out += [k for k in entry if k not in out]
    return out


def expand(matrix: Mapping[str, list[Any]], cap: int) -> list[dict[str, Any]]:
    """The combinations, in GitHub's order; ``TooManyCombinations`` past ``cap``.

    The cross product is counted before it is built, and it counts toward ``cap`` before
    ``exclude`` removes any: so a huge matrix costs nothing to refuse."""
    base = axes(matrix)
    excludes = matrix.get("exclude", [])
    includes = matrix.get("include", [])
    product = math.prod(len(v) for v in base.values()) if base else 0
    if product > cap:
        raise TooManyCombinations(product, cap)
    combos = [c for c in _product(base) if not any(_matches(c, e) for e in excludes)]
    extra: list[dict[str, Any]] = []
    for entry in includes:
        merged = False
        for combo in combos:
            if all(combo[k] == v for k, v in entry.items() if k in base):
                combo.update(entry)
                merged = True
        if not merged:
            extra.append(dict(entry))
    out = combos + extra
    if len(out) > cap:
        raise TooManyCombinations(len(out), cap)
    return out


def label(values: Mapping[str, Any]) -> str:
    """How an instance is shown: ``python-version=3.12, os=linux``."""
    return ", ".join(f"{k}={_short(v)}" for k, v in values.items())


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def _product(base: Mapping[str, list[Any]]) -> Iterator[dict[str, Any]]:
    if not base:
        return
    names = list(base)
    for values in itertools.product(*(base[k] for k in names)):
        yield dict(zip(names, values, strict=True))


def _matches(combo: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(k in combo and combo[k] == v for k, v in entry.items())
