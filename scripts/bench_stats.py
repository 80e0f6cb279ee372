"""Statistics over the benchmark's records: medians, ratios within a repetition, tables."""

# Tables are Markdown for people: ranges use an en dash on purpose.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from bench_config import FLOOR, RAW, RB, RB_AOF, SIDES

WORKER_CPU = {RB: "rb_worker", RB_AOF: "rb_worker", RAW: "raw_worker"}


def stat(values: Sequence[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def fmt(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``median [min–max]`` of ``values`` times ``scale``; a dash when there are none."""
    s = stat([v * scale for v in values])
    if s is None:
        return "—"
    med, lo, hi = s
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Records:
    """Queries over the records of one scenario."""

    def __init__(self, records: Iterable[Any], scenario: str) -> None:
        self.records = [r for r in records if r.scenario == scenario]

    def cells(self) -> list[dict[str, int]]:
        out: list[dict[str, int]] = []
        for r in self.records:
            if r.cell not in out:
                out.append(r.cell)
        return out

    def sides(self) -> list[str]:
        present = {r.side for r in self.records}
        return [s for s in SIDES if s in present]

    def ok(self, cell: dict[str, int], side: str) -> dict[int, Any]:
        return {
            r.rep: r
            for r in self.records
            if r.cell == cell and r.side == side and r.status == "ok" and r.wall is not None
        }

    def walls(self, cell: dict[str, int], side: str) -> list[float]:
        return [r.wall for r in self.ok(cell, side).values()]

    def per_step(self, cell: dict[str, int], side: str) -> list[float]:
        return [r.wall / r.steps for r in self.ok(cell, side).values()]

    def rate(self, cell: dict[str, int], side: str) -> list[float]:
        return [r.steps / r.wall for r in self.ok(cell, side).values() if r.wall > 0]

    def ratio(self, cell: dict[str, int], num: str, den: str) -> list[float]:
        """``num`` wall / ``den`` wall, within each repetition where both finished."""
        a, b = self.ok(cell, num), self.ok(cell, den)
        return [a[rep].wall / b[rep].wall for rep in a if rep in b and b[rep].wall > 0]

    def above_floor(self, cell: dict[str, int], side: str) -> list[float]:
        """Seconds per step above the floor of the same repetition."""
        a, f = self.ok(cell, side), self.ok(cell, FLOOR)
        return [(a[rep].wall - f[rep].wall) / a[rep].steps for rep in a if rep in f]

    def extra(self, cell: dict[str, int], side: str, key: str) -> list[float]:
        return [r.extra[key] for r in self.ok(cell, side).values() if key in r.extra]

    def cpu_per_step(self, cell: dict[str, int], side: str, who: str) -> list[float]:
        key = "cpu_" + (who if who != "worker" else WORKER_CPU.get(side, "none"))
        return [r.extra[key] / r.steps for r in self.ok(cell, side).values() if key in r.extra]

    def failures(self) -> list[Any]:
        return [r for r in self.records if r.status != "ok"]


def cell_name(cell: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items())


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
