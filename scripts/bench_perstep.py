"""Per-step cost, counted rather than timed: runbook-celery next to raw Celery, in one run.

    python scripts/bench_perstep.py                  # chain and fan-out, table on stdout
    python scripts/bench_perstep.py --runs 10 --chain 10 --fan 8 --json /tmp/perstep.json

For each side (runbook-celery, raw Celery: scripts/bench_rawcelery.py) and each shape (a
chain of M steps; a fan-out 1 -> W -> 1), it runs workflows on a private redis-server with a
real worker of that side alone, and reads per step:

* Redis commands by name, from ``INFO commandstats`` (commands a Lua script runs count
  too, as Redis counts them), and their total without the idle ones (a worker's BRPOP
  loop, health-check PINGs, the harness's own INFO and SELECT);
* bytes into Redis (``total_net_input_bytes``);
* round trips per process (the client, the worker's main process, its pool processes),
  by first command name, counted by a redis-py hook in each (bench_roundtrips.py).

Counts do not depend on the machine's speed, except what runs on a timer (a worker's
heartbeat, the notifier's blocking read, BRPOP timeouts): leases are set long so that no
renewal or reconciler pass falls inside a measurement, and each measurement runs several
workflows so that a timer's few calls are small per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench_roundtrips  # noqa: E402
import bench_workflows as wf  # noqa: E402
from bench_infra import IDLE_COMMANDS, RedisServer, Worker, start_workers, stop_workers  # noqa: E402

RB, RAW = "runbook-celery", "raw Celery"
CHAIN, FAN = "chain", "fan-out"
# runbook-celery as shipped: broker, result backend and store in one database (the
# broker URL defaults to the store's), which lets a chain link's FINISH send the next link
DB_RB_BROKER = DB_RB_STATE = 1
DB_RAW_BROKER, DB_RAW_BACKEND = 2, 3
# a blocking read that returns on a timer when idle (the notifier's), and the harness's own
# reads: left out when waiting for the workers to go quiet
SETTLE_IGNORED = IDLE_COMMANDS | {"xreadgroup", "publish"}


@dataclass
class Sample:
    """What one side spent on one shape, in total over ``steps`` steps."""

    side: str
    shape: str
    steps: int
    commands: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    redis_cpu: float = 0.0  # seconds (timed, unlike the rest: shown, never asserted)
    roundtrips: dict[str, Counter[str]] = field(default_factory=dict)

    def busy_commands(self) -> int:
        return sum(v for k, v in self.commands.items() if k not in IDLE_COMMANDS)

    def per_step(self, n: float) -> float:
        return n / self.steps

    def roundtrips_of(self, role: str, *, idle: bool = False) -> int:
        counts = self.roundtrips.get(role, Counter())
        if idle:
            return sum(counts.values())
        return sum(v for k, v in counts.items() if k.lower() not in IDLE_COMMANDS)

    def as_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "shape": self.shape,
            "steps": self.steps,
            "commands_per_step": round(self.per_step(self.busy_commands()), 2),
            "bytes_in_per_step": round(self.per_step(self.bytes_in)),
            "redis_cpu_ms_per_step": round(self.per_step(self.redis_cpu * 1000), 3),
            "roundtrips_per_step": {
                role: round(self.per_step(self.roundtrips_of(role)), 2) for role in self.roundtrips
            },
            "commands_by_name_per_step": {
                k: round(self.per_step(v), 2) for k, v in sorted(self.commands.items())
            },
            "roundtrips_by_name_per_step": {
                role: {k: round(self.per_step(v), 2) for k, v in sorted(c.items())}
                for role, c in self.roundtrips.items()
            },
        }


class CountedWorker(Worker):
    """A bench worker whose processes count their Redis round trips (bench_roundtrips)."""

    def command(self) -> list[str]:
        cmd = super().command()
        assert cmd[1:3] == ["-m", "celery"]
        return [cmd[0], str(SCRIPTS / "bench_roundtrips.py"), *cmd[3:]]


class PerStep:
    """Owns the private Redis and one worker per side; measures shapes one side at a time."""

    def __init__(self, workdir: Path, concurrency: int = 2) -> None:
        self.workdir = workdir
        self.concurrency = concurrency
        self.counts_dir = workdir / "roundtrips"
        self.counts_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir)
        tag = uuid.uuid4().hex[:8]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RUNBOOK_", "BENCH_")) or k == bench_roundtrips.TRACE_ENV
        }
        env.update(
            RUNBOOK_BROKER_URL=self.redis.url(DB_RB_BROKER),
            RUNBOOK_REDIS_URL=self.redis.url(DB_RB_STATE),
            RUNBOOK_PREFIX=f"perstep-{tag}",
            RUNBOOK_QUEUE=f"perstep-rb-{tag}",
            # no lease renewal and no reconciler pass within a measurement (timers, not steps)
            RUNBOOK_LEASE_SECONDS="600",
            BENCH_RAW_BROKER_URL=self.redis.url(DB_RAW_BROKER),
            BENCH_RAW_BACKEND_URL=self.redis.url(DB_RAW_BACKEND),
            BENCH_RAW_QUEUE=f"perstep-raw-{tag}",
            BENCH_ROUNDTRIP_DIR=str(self.counts_dir),
            PYTHONPATH=os.pathsep.join(
                p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        self.env = env
        # settings are read once, at first import: set them before importing either app
        for key in [k for k in os.environ if k.startswith(("RUNBOOK_", "BENCH_")) and k not in env]:
            del os.environ[key]
        os.environ.update(env)
        bench_roundtrips.install()
        import bench_rawcelery

        from runbook_celery.engine.app import app as rb_app

        self.raw = bench_rawcelery
        self.files = wf.WorkflowFiles(workdir / "workflows", None)

        def pinger(app: Any) -> Callable[[str], bool]:
            return lambda node: bool(app.control.ping(destination=[node], timeout=0.5))

        common: dict[str, Any] = dict(
            concurrency=concurrency, env=env, log_dir=workdir, loglevel="WARNING"
        )
        self.workers = {
            RB: CountedWorker(
                "rb",
                "runbook_celery",
                env["RUNBOOK_QUEUE"],
                ping=pinger(rb_app),
                cwd=ROOT,
                **common,
            ),
            RAW: CountedWorker(
                "raw",
                "bench_rawcelery",
                env["BENCH_RAW_QUEUE"],
                ping=pinger(bench_rawcelery.app),
                cwd=SCRIPTS,
                **common,
            ),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            stop_workers(list(self.workers.values()))
        self.redis.stop()

    # ------------------------------------------------------------------ one side

    @contextlib.contextmanager
    def side(self, side: str) -> Iterator[None]:
        """Only this side's worker runs (the other's timers would count for it)."""
        worker = self.workers[side]
        start_workers([worker])
        try:
            yield
        finally:
            stop_workers([worker])

    def run_rb(self, path: Path, runs: int) -> None:
        from runbook_celery.client.api import submit

        handles = [submit(path) for _ in range(runs)]
        for run in handles:
            record = run.wait(timeout=300)
            if record.status != "succeeded":
                raise RuntimeError(f"run {run.id} ended {record.status}")

    def run_raw(self, canvas: Callable[[], Any], runs: int) -> None:
        results = [canvas().apply_async() for _ in range(runs)]
        for result in results:
            for r in getattr(result, "results", None) or [result]:
                self.raw.app.AsyncResult(r.id).get(timeout=300, disable_sync_subtasks=False)

    def measure(self, side: str, shape: str, steps: int, go: Callable[[], None]) -> Sample:
        """Counts while ``go`` runs, and until the workers have gone quiet after it."""
        self._settle()
        commands0, bytes0, trips0 = self._counts()
        cpu0 = self.redis.cpu_seconds()
        go()
        self._settle()
        cpu1 = self.redis.cpu_seconds()
        commands1, bytes1, trips1 = self._counts()
        sample = Sample(side, shape, steps, bytes_in=bytes1 - bytes0, redis_cpu=cpu1 - cpu0)
        sample.commands = Counter(
            {k: v - commands0.get(k, 0) for k, v in commands1.items() if v > commands0.get(k, 0)}
        )
        sample.commands.pop("info", None)  # the harness's own reads
        leader = self.workers[side].proc
        leader_pid = leader.pid if leader is not None else -1
        for pid, (ppid, counts) in trips1.items():
            before = trips0.get(pid, (ppid, Counter()))[1]
            delta = counts - before
            if not delta:
                continue
            if pid == os.getpid():
                role = "client"
                delta.pop("INFO", None)
            elif pid == leader_pid:
                role = "worker main"
            elif ppid == leader_pid:
                role = "pool"
            else:
                role = f"other (parent {ppid})"
            sample.roundtrips.setdefault(role, Counter()).update(delta)
        return sample

    def _counts(self) -> tuple[dict[str, int], int, dict[int, tuple[int, Counter[str]]]]:
        commands = self.redis.command_counts()
        stats = self.redis.admin.info("stats")
        return commands, int(stats["total_net_input_bytes"]), bench_roundtrips.read(self.counts_dir)

    def _settle(self, timeout: float = 30.0) -> None:
        """Wait until no busy command ran for 0.3 s: a step's last writes (its result, its
        events, their readers) may land after the client saw the run end."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            counts = self.redis.command_counts()
            busy = sum(v for k, v in counts.items() if k not in SETTLE_IGNORED)
            if busy == last:
                return
            last = busy
            time.sleep(0.3)  # a measurement pause, not synchronisation of a result
        raise RuntimeError("the workers never went quiet")

    # ------------------------------------------------------------------ shapes

    def all(self, runs: int, chain: int, fan: int) -> list[Sample]:
        """Both shapes on both sides: runbook-celery first, then raw Celery."""
        samples = []
        chain_file, fan_file = self.files.chain(chain), self.files.fan(fan)
        with self.side(RB):
            self.run_rb(self.files.chain(2), 1)  # warm-up: imports, connections, scripts
            samples.append(
                self.measure(RB, CHAIN, runs * chain, lambda: self.run_rb(chain_file, runs))
            )
            samples.append(
                self.measure(RB, FAN, runs * (fan + 2), lambda: self.run_rb(fan_file, runs))
            )
        with self.side(RAW):
            self.run_raw(lambda: self.raw.chain_canvas(wf.COMMAND, 2), 1)
            samples.append(
                self.measure(
                    RAW,
                    CHAIN,
                    runs * chain,
                    lambda: self.run_raw(lambda: self.raw.chain_canvas(wf.COMMAND, chain), runs),
                )
            )
            samples.append(
                self.measure(
                    RAW,
                    FAN,
                    runs * (fan + 2),
                    lambda: self.run_raw(lambda: self.raw.fan_canvas(wf.COMMAND, fan), runs),
                )
            )
        return samples


def measure_all(
    runs: int = 5, chain: int = 10, fan: int = 8, concurrency: int = 2, workdir: Path | None = None
) -> list[Sample]:
    """Start everything, measure both sides and shapes, stop everything. ``workdir``: keep
    the worker logs and round-trip files (and traces, BENCH_ROUNDTRIP_TRACE) there."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="perstep-")))
        bench = PerStep(workdir, concurrency)
        try:
            return bench.all(runs, chain, fan)
        finally:
            bench.close()


def ratios(samples: list[Sample], shape: str) -> tuple[float, float]:
    """runbook-celery / raw Celery for ``shape``: (busy commands, pool round trips) per step."""
    by = {(s.side, s.shape): s for s in samples}
    rb, raw = by[(RB, shape)], by[(RAW, shape)]
    commands = (rb.busy_commands() / rb.steps) / (raw.busy_commands() / raw.steps)
    trips = (rb.roundtrips_of("pool") / rb.steps) / (raw.roundtrips_of("pool") / raw.steps)
    return commands, trips


def report(samples: list[Sample]) -> str:
    """A plain-text table: per step, by side and shape, then commands by name."""
    by = {(s.side, s.shape): s for s in samples}
    lines = ["per step                       " + "".join(f"{s.side[:8]:>10}" for s in samples)]
    lines.append("                               " + "".join(f"{s.shape:>10}" for s in samples))

    def row(label: str, value: Callable[[Sample], float]) -> None:
        lines.append(f"{label:<31}" + "".join(f"{value(s):>10.2f}" for s in samples))

    row("Redis commands (busy)", lambda s: s.per_step(s.busy_commands()))
    row("bytes into Redis", lambda s: s.per_step(s.bytes_in))
    row("Redis CPU, ms (timed)", lambda s: s.per_step(s.redis_cpu * 1000))
    for role in ("pool", "worker main", "client"):
        row(f"round trips: {role}", lambda s, role=role: s.per_step(s.roundtrips_of(role)))
    for shape in (CHAIN, FAN):
        if (RB, shape) in by and (RAW, shape) in by:
            commands, trips = ratios(samples, shape)
            lines.append(
                f"{shape}: commands {commands:.2f}x raw, pool round trips {trips:.2f}x raw"
            )
    lines.append("")
    lines.append("commands by name, per step")
    names = sorted({k for s in samples for k in s.commands})
    for name in names:
        mark = " (idle)" if name in IDLE_COMMANDS else ""
        row(f"  {name}{mark}", lambda s, name=name: s.per_step(s.commands.get(name, 0)))
    lines.append("")
    lines.append("pool round trips by first command, per step")
    names = sorted({k for s in samples for k in s.roundtrips.get("pool", {})})
    for name in names:
        row(f"  {name}", lambda s, name=name: s.per_step(s.roundtrips.get("pool", Counter())[name]))
    lines.append("")
    lines.append("worker main round trips by first command, per step")
    names = sorted({k for s in samples for k in s.roundtrips.get("worker main", {})})
    for name in names:
        row(
            f"  {name}",
            lambda s, name=name: s.per_step(s.roundtrips.get("worker main", Counter())[name]),
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="workflows per shape (default 5)")
    parser.add_argument("--chain", type=int, default=10, help="steps of the chain (default 10)")
    parser.add_argument("--fan", type=int, default=8, help="width of the fan-out (default 8)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, help="keep logs and round-trip files here")
    args = parser.parse_args(argv)
    samples = measure_all(args.runs, args.chain, args.fan, args.concurrency, args.workdir)
    print(report(samples))
    if args.json:
        out = {
            "samples": [s.as_json() for s in samples],
            "ratios_to_raw": {
                shape: dict(
                    zip(("commands", "pool_roundtrips"), ratios(samples, shape), strict=True)
                )
                for shape in (CHAIN, FAN)
            },
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
