"""What the benchmark measures: the sides, the sizes of each scenario, one measurement."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

FLOOR, RAW, RB, RB_AOF = "floor", "raw Celery", "runbook-celery", "runbook-celery (AOF)"
SIDES = (FLOOR, RAW, RB, RB_AOF)
SCENARIOS = ("chains", "fanout", "latency", "linear", "growth", "foreach", "peers", "perstep")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Sizes:
    """What each scenario runs; the defaults are chosen to finish in < 15 min on 2 cores."""

    reps: int = 5
    chain_n: tuple[int, ...] = (1, 10, 100, 500)
    chain_m: tuple[int, ...] = (1, 5, 20)
    max_chain_steps: int = 500  # cells with N*M above this run only with --full
    fan_widths: tuple[int, ...] = (10, 100, 1000)
    latency_triggers: int = 30
    latency_spacing: float = 0.1  # seconds between triggers, so each meets an idle worker
    cold_runs: int = 5
    validate_steps: int = 200
    growth_sizes: tuple[int, ...] = (400, 1000, 2500)
    growth_lane: int = 25  # steps per chain; a growth workflow is size/lane parallel chains
    linear_sizes: tuple[int, ...] = (1000, 10000)  # one chain of n steps (issue 17: at most 12x)
    linear_reps: int = 1
    foreach_items: int = 10_000  # one for_each of this many instances (issue 17: 5 s, 5 s)
    concurrency_levels: tuple[int, ...] = (1, 2, 4)
    concurrency_steps: int = 200
    aof: bool = True
    peers: bool = True  # run the installed peers (scenario 5); never installs them
    watchdog_base: float = 30.0  # seconds, plus watchdog_per_step for each step
    watchdog_per_step: float = 0.06
    budget: float = 14 * 60.0  # seconds; measurements past it are skipped and reported
    perstep_runs: int = 5  # workflows per shape and side, counted (bench_perstep.py)

    def chain_cells(self) -> list[tuple[int, int]]:
        return [(n, m) for n in self.chain_n for m in self.chain_m if n * m <= self.max_chain_steps]


SMOKE = Sizes(
    reps=1,
    chain_n=(1, 3),
    chain_m=(1, 3),
    fan_widths=(3,),
    latency_triggers=3,
    latency_spacing=0.02,
    cold_runs=1,
    validate_steps=20,
    growth_sizes=(20, 40),
    growth_lane=10,
    linear_sizes=(20, 200),
    foreach_items=200,
    concurrency_levels=(1,),
    concurrency_steps=20,
    perstep_runs=1,
    peers=False,
    watchdog_base=20.0,
    budget=90.0,
)


@dataclass
class Record:
    """One measurement of one side in one repetition."""

    scenario: str
    cell: dict[str, int]
    rep: int
    side: str
    status: str = "ok"  # ok | hung | error | skipped
    wall: float | None = None
    steps: int = 0
    message: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Benchmark runbook-celery against raw Celery and a subprocess floor.",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (CI)")
    p.add_argument("--full", action="store_true", help="every N x M cell (about 40 min)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5, smoke 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown report to write")
    p.add_argument("--json", type=Path, default=None, help="also write the raw records as JSON")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker concurrency and floor thread-pool size (default: usable cores)",
    )
    p.add_argument("--no-aof", action="store_true", help="skip the AOF everysec column")
    p.add_argument("--budget", type=float, default=None, help="minutes before skipping the rest")
    p.add_argument("--loglevel", default="INFO", help="worker log level (default INFO, shipped)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (worker/Redis logs)")
    args = p.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = SMOKE if args.smoke else Sizes()
    if args.full:
        sizes = replace(sizes, max_chain_steps=10**9, budget=sizes.budget * 4)
    if args.reps is not None:
        sizes = replace(sizes, reps=args.reps)
    if args.no_aof:
        sizes = replace(sizes, aof=False)
    if args.budget is not None:
        sizes = replace(sizes, budget=args.budget * 60)
    return sizes
