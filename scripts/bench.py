"""Benchmark runbook-celery against raw Celery and a subprocess floor; write docs/benchmarks.md.

    python scripts/bench.py                 # the default run (< 15 min on 2 cores)
    python scripts/bench.py --smoke --out /tmp/bench.md   # tiny sizes, one repetition (CI)
    python scripts/bench.py --scenarios chains,latency --reps 7
    python scripts/bench.py --scenarios linear,foreach   # the growth rows of issue 17 alone
    python scripts/bench_peers.py install   # once: Luigi, Prefect, Airflow for scenario 5

The harness starts its own redis-server on a free loopback port (no persistence; the AOF
column switches `appendonly yes` / `appendfsync everysec` on for its measurements only),
starts and stops its own Celery workers, and interleaves the sides of every measurement
(floor, raw Celery, runbook-celery, ...) within each repetition so that drift in the
machine hits all sides alike. Ratios are computed within a repetition. Every measurement
runs under a watchdog: a hung one is reported, its workers are restarted, and the run goes
on. See docs/benchmarks.md for the method and the latest figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_peers
import bench_report
import bench_workflows as wf
from bench_config import FLOOR, RAW, RB, RB_AOF, SCENARIOS, Record, Sizes, parse_args, sizes_for
from bench_infra import (
    Hung,
    RedisServer,
    Worker,
    command_delta,
    git_revision,
    load_average,
    machine,
    machine_busy_seconds,
    package_versions,
    run_measured,
    self_cpu_seconds,
    start_workers,
    stop_workers,
    watchdog,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent

# Redis databases on the private server
# runbook-celery as shipped: broker, result backend and store in one database (the
# broker URL defaults to the store's), which lets a chain link's FINISH send the next link
DB_RB_BROKER = DB_RB_STATE = 1
DB_RAW_BROKER, DB_RAW_BACKEND = 2, 3
STATE_DBS = (DB_RB_STATE, DB_RAW_BACKEND)


class Bench:
    """Owns the Redis server and the workers; runs scenarios; collects records."""

    def __init__(self, sizes: Sizes, concurrency: int, workdir: Path, loglevel: str) -> None:
        self.sizes = sizes
        self.concurrency = concurrency
        self.workdir = workdir
        self.loglevel = loglevel
        self.started = time.monotonic()
        self.records: list[Record] = []
        self.latency: list[dict[str, Any]] = []
        self.cold: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.timings: dict[str, float] = {}
        self.peers: dict[str, bench_peers.PeerResult] = {}
        self.peers_dir = bench_peers.peers_dir()  # start() drops RUNBOOK_* from the env
        self.notes: list[str] = []
        self.hangs: dict[tuple[str, str], int] = {}
        self.redis: RedisServer | None = None
        self.perstep: dict[str, Any] | None = None
        self.foreach: dict[str, Any] | None = None
        self.workers: list[Worker] = []

    # ------------------------------------------------------------------ setup / teardown

    def start(self) -> None:
        self.redis = RedisServer(self.workdir)
        tag = uuid.uuid4().hex[:8]
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "BENCH_RAW_"))
        }
        self.env.update(
            RUNBOOK_BROKER_URL=self.redis.url(DB_RB_BROKER),
            RUNBOOK_REDIS_URL=self.redis.url(DB_RB_STATE),
            RUNBOOK_PREFIX=f"bench-{tag}",
            RUNBOOK_QUEUE=f"bench-rb-{tag}",
            BENCH_RAW_BROKER_URL=self.redis.url(DB_RAW_BROKER),
            BENCH_RAW_BACKEND_URL=self.redis.url(DB_RAW_BACKEND),
            BENCH_RAW_QUEUE=f"bench-raw-{tag}",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p
            ),
        )
        # settings are read once, at first import: set them before importing either app
        for key in [k for k in os.environ if k.startswith(("RUNBOOK_", "BENCH_RAW_"))]:
            del os.environ[key]
        os.environ.update(self.env)
        import bench_rawcelery

        from runbook_celery.engine.app import app as rb_app

        self.raw = bench_rawcelery
        self.files = wf.WorkflowFiles(self.workdir / "workflows", self.sizes)

        def pinger(app: Any) -> Callable[[str], bool]:
            return lambda node: bool(app.control.ping(destination=[node], timeout=0.5))

        common = dict(
            concurrency=self.concurrency, env=self.env, log_dir=self.workdir, loglevel=self.loglevel
        )
        self.rb_worker = Worker(
            "rb",
            "runbook_celery",
            self.env["RUNBOOK_QUEUE"],
            ping=pinger(rb_app),
            cwd=ROOT,
            **common,  # type: ignore[arg-type]
        )
        self.raw_worker = Worker(
            "raw",
            "bench_rawcelery",
            self.env["BENCH_RAW_QUEUE"],
            ping=pinger(bench_rawcelery.app),
            cwd=SCRIPTS,
            **common,  # type: ignore[arg-type]
        )
        self.workers = [self.rb_worker, self.raw_worker]
        start_workers(self.workers)
        self.warm_up()

    def stop(self) -> None:
        self._release_raw_results()
        try:
            stop_workers(self.workers)
        except Exception as exc:  # still stop Redis
            self.problems.append(f"stopping workers: {exc}")
        if self.redis is not None:
            self.redis.stop()

    def _release_raw_results(self) -> None:
        """Let AsyncResults die while Redis is up (their __del__ unsubscribes, with retries)."""
        import gc

        gc.collect()
        raw = getattr(self, "raw", None)
        if raw is not None and raw.app.backend.is_async:
            consumer = raw.app.backend.result_consumer
            with contextlib.suppress(Exception):
                consumer.stop()
            consumer._pubsub = None
            consumer.subscribed_to.clear()

    def _reset_clients(self) -> None:
        """Drop client connections a watchdog may have cut mid-reply (kombu reconnects itself)."""
        from runbook_celery.store.redisconn import client_for

        self._release_raw_results()
        with contextlib.suppress(Exception):
            client_for(self.env["RUNBOOK_REDIS_URL"]).connection_pool.disconnect()
        with contextlib.suppress(Exception):
            self.raw.app.backend.client.connection_pool.disconnect()

    def set_concurrency(self, c: int) -> None:
        if c != self.concurrency:
            self.concurrency = c
            stop_workers(self.workers)
            start_workers(self.workers, c)
            self.warm_up()

    def warm_up(self) -> None:
        """One small run per side so that imports and pool start-up are not timed."""
        n = 2 * self.concurrency
        with watchdog(120, "warm-up"):
            self.side_floor_lanes(n, 3)
            self.side_raw_chains(n, 3)
            self.side_rb_chains(n, self.files.chain(3))

    def recover(self) -> None:
        """After a hang: kill the workers, drop every queue and result, start afresh."""
        stop_workers(self.workers, grace=2)
        assert self.redis is not None
        self.redis.flush(DB_RB_BROKER, DB_RB_STATE, DB_RAW_BROKER, DB_RAW_BACKEND)
        self.redis.set_aof(False)
        self._reset_clients()
        start_workers(self.workers)

    # ------------------------------------------------------------------ measuring

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def measure(
        self,
        scenario: str,
        cell: dict[str, int],
        rep: int,
        side: str,
        steps: int,
        fn: Callable[[], dict[str, float] | None],
    ) -> Record:
        """Time ``fn`` under a watchdog, with the CPU each process spent on it."""
        rec = Record(scenario, cell, rep, side, steps=steps)
        self.records.append(rec)
        if self.elapsed() > self.sizes.budget:
            rec.status, rec.message = "skipped", "time budget spent"
            return rec
        if self.hangs.get((scenario, side), 0) >= 2:
            rec.status, rec.message = "skipped", "side hung twice in this scenario"
            return rec
        assert self.redis is not None
        self.redis.flush(*STATE_DBS)
        aof = side == RB_AOF
        if aof:
            self.redis.set_aof(True)
        timeout = self.sizes.watchdog_base + self.sizes.watchdog_per_step * steps
        label = f"{scenario} {cell} rep {rep} {side}"
        cmds0 = self.redis.command_counts()
        cpu0 = self._cpu()
        try:
            with watchdog(timeout, label):
                t0 = time.perf_counter()
                extra = fn() or {}
                rec.wall = time.perf_counter() - t0
            cpu1 = self._cpu()
            cmds = command_delta(cmds0, self.redis.command_counts())
            rec.extra = {**extra, **{f"cpu_{k}": cpu1[k] - cpu0[k] for k in cpu0}, **cmds}
        except Hung as exc:
            rec.status = "hung"
            rec.message = f"no result after {exc.seconds:.0f} s (watchdog); workers restarted"
            self.hangs[(scenario, side)] = self.hangs.get((scenario, side), 0) + 1
            self.recover()
        except Exception as exc:
            rec.status, rec.message = "error", f"{type(exc).__name__}: {exc}"[:500]
            self.recover()
        finally:
            if aof:
                self.redis.set_aof(False)
        return rec

    def _cpu(self) -> dict[str, float]:
        assert self.redis is not None
        return {
            "machine": machine_busy_seconds(),
            "client": self_cpu_seconds(),
            "rb_worker": self.rb_worker.cpu_seconds(),
            "raw_worker": self.raw_worker.cpu_seconds(),
            "redis": self.redis.cpu_seconds(),
        }

    # ------------------------------------------------------------------ sides

    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.concurrency)

    def side_floor_lanes(self, lanes: int, per: int) -> None:
        with self._pool() as pool:
            for _ in pool.map(lambda _i: [wf.floor_step() for _j in range(per)], range(lanes)):
                pass

    def side_floor_fan(self, width: int) -> None:
        wf.floor_step()
        with self._pool() as pool:
            for _ in pool.map(lambda _i: wf.floor_step(), range(width)):
                pass
        wf.floor_step()

    def _wait_raw(self, result: Any) -> None:
        """Wait for the last task of a canvas the cheapest way Celery offers.

        A fresh AsyncResult of the last task wakes on its own pub/sub message. Waiting on
        the result apply_async returns would also re-read every parent's state on every
        wake-up (``_maybe_reraise_parent_error``: 1,000 GETs per wake-up behind a
        1,000-branch chord), and GroupResult.get() adds a 0.5 s join interval; neither is
        the cost of running the steps, and on 2 cores the first steals the workers' CPU.
        """
        for r in getattr(result, "results", None) or [result]:
            self.raw.app.AsyncResult(r.id).get(disable_sync_subtasks=False)

    def side_raw_chains(self, n: int, m: int) -> None:
        results = [self.raw.chain_canvas(wf.COMMAND, m).apply_async() for _ in range(n)]
        for r in results:
            self._wait_raw(r)

    def side_raw_canvas(self, canvas: Any) -> None:
        self._wait_raw(canvas.apply_async())

    def side_rb_chains(self, n: int, path: Path) -> dict[str, float]:
        from runbook_celery.client.api import submit

        t0 = time.perf_counter()
        runs = [submit(path) for _ in range(n)]
        submitted = time.perf_counter() - t0
        for run in runs:
            record = run.wait()
            if record.status != "succeeded":
                raise RuntimeError(f"run {run.id} {record.status}")
        return {"submit": submitted}

    # ------------------------------------------------------------------ scenarios

    def sides(self, with_aof: bool) -> list[str]:
        return [FLOOR, RAW, RB] + ([RB_AOF] if with_aof and self.sizes.aof else [])

    def scenario_chains(self) -> None:
        cells = self.sizes.chain_cells()
        for rep in range(self.sizes.reps):
            for n, m in cells:
                path = self.files.chain(m)
                run: dict[str, Callable[[], Any]] = {
                    FLOOR: lambda n=n, m=m: self.side_floor_lanes(n, m),
                    RAW: lambda n=n, m=m: self.side_raw_chains(n, m),
                    RB: lambda n=n, path=path: self.side_rb_chains(n, path),
                    RB_AOF: lambda n=n, path=path: self.side_rb_chains(n, path),
                }
                for side in self.sides(with_aof=True):
                    self.measure("chains", {"N": n, "M": m}, rep, side, n * m, run[side])

    def scenario_fanout(self) -> None:
        for rep in range(self.sizes.reps):
            for w in self.sizes.fan_widths:
                path = self.files.fan(w)
                run: dict[str, Callable[[], Any]] = {
                    FLOOR: lambda w=w: self.side_floor_fan(w),
                    RAW: lambda w=w: self.side_raw_canvas(self.raw.fan_canvas(wf.COMMAND, w)),
                    RB: lambda path=path: self.side_rb_chains(1, path),
                }
                for side in self.sides(with_aof=False):
                    self.measure("fanout", {"W": w}, rep, side, w + 2, run[side])

    def scenario_latency(self) -> None:
        from runbook_celery.client.api import submit
        from runbook_celery.client.run import Run

        probe = self.files.latency()

        def floor() -> tuple[float, float, float]:
            t0 = time.time()
            started = float(wf.floor_step(wf.PROBE_COMMAND))
            return t0, started, time.time()

        def raw() -> tuple[float, float, float]:
            t0 = time.time()
            out = self.raw.bash.apply_async((wf.PROBE_COMMAND,)).get()
            return t0, float(out["stdout"]), time.time()

        def rb() -> tuple[float, float, float]:
            t0 = time.time()
            record = submit(probe).wait()
            t1 = time.time()
            return t0, float(record.steps["probe"].outputs["t"]), t1

        sides = {FLOOR: floor, RAW: raw, RB: rb}
        assert self.redis is not None
        self.redis.flush(*STATE_DBS)
        for i in range(self.sizes.latency_triggers):
            for side, fn in sides.items():
                if self.elapsed() > self.sizes.budget:
                    self.notes.append("latency: time budget spent, triggers cut short")
                    break
                time.sleep(self.sizes.latency_spacing)
                try:
                    with watchdog(30, f"latency {side} #{i}"):
                        t0, started, t1 = fn()
                except Exception as exc:
                    self.problems.append(f"latency {side} #{i}: {type(exc).__name__}: {exc}")
                    if isinstance(exc, Hung):
                        self.recover()
                    continue
                self.latency.append(
                    {"side": side, "i": i, "start": started - t0, "result": t1 - t0}
                )
        # cold processes: the CLI against bare interpreter and Celery import
        cli = wf.console_script("runbook-celery")
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            'python -c "import celery"': [sys.executable, "-c", "import celery"],
            "python -c <minimal Celery client sends one task>": [
                sys.executable,
                "-c",
                "from celery import Celery; "
                f"Celery(broker={self.env['BENCH_RAW_BROKER_URL']!r})"
                f".send_task('bench.bash', ('true',), queue={self.env['BENCH_RAW_QUEUE']!r})",
            ],
            "runbook-celery trigger small.yaml": [*cli, "trigger", str(self.files.small())],
            f"runbook-celery validate {self.sizes.validate_steps}-step file": [
                *cli,
                "validate",
                str(self.files.validate()),
            ],
        }
        for i in range(self.sizes.cold_runs):
            for what, cmd in commands.items():
                try:
                    pt = run_measured(cmd, self.env, cwd=self.workdir, timeout=60)
                except Exception as exc:
                    self.problems.append(f"cold {what} #{i}: {type(exc).__name__}: {exc}")
                    continue
                if pt.returncode != 0:
                    self.problems.append(f"cold {what} #{i}: exit {pt.returncode}: {pt.stdout}")
                self.cold.append({"what": what, "i": i, "wall": pt.wall, "cpu": pt.cpu})
                if "trigger" in what and pt.returncode == 0:
                    try:
                        with watchdog(30, "trigger run"):
                            Run(pt.stdout.strip().splitlines()[-1]).wait()
                    except Exception as exc:
                        self.problems.append(f"triggered run #{i}: {type(exc).__name__}: {exc}")

    def _lanes_sides(self, size: int) -> dict[str, Callable[[], Any]]:
        lane = self.sizes.growth_lane
        lanes = max(1, size // lane)
        path = self.files.lanes(lanes, lane)
        return {
            FLOOR: lambda: self.side_floor_lanes(lanes, lane),
            RAW: lambda: self.side_raw_canvas(self.raw.lanes_canvas(wf.COMMAND, lanes, lane)),
            RB: lambda: self.side_rb_chains(1, path),
        }

    def _rss(self, when: str) -> None:
        self.rss.append({"when": when, RB: self.rb_worker.rss_mb(), RAW: self.raw_worker.rss_mb()})

    def scenario_linear(self) -> None:
        """A growth row: one linear workflow of each size, whose cost must grow linearly (long
        chains are sent in segments); runbook-celery only, as a raw Celery chain's messages
        grow as n^2."""
        for rep in range(self.sizes.linear_reps):
            for n in self.sizes.linear_sizes:
                path = self.files.chain(n)
                self.measure(
                    "linear", {"steps": n}, rep, RB, n, lambda p=path: self.side_rb_chains(1, p)
                )

    def scenario_growth(self) -> None:
        default_c = self.concurrency
        biggest = max(self.sizes.growth_sizes)
        self._rss("before the growth runs (after warm-up)")
        for rep in range(self.sizes.reps):
            for size in self.sizes.growth_sizes:
                lane = self.sizes.growth_lane
                steps = max(1, size // lane) * lane
                for side, fn in self._lanes_sides(size).items():
                    self.measure("growth", {"steps": steps}, rep, side, steps, fn)
                if size == biggest:
                    self._rss(f"after {steps}-step run, repetition {rep + 1}")
        for c in self.sizes.concurrency_levels:
            if self.elapsed() > self.sizes.budget:
                self.notes.append(f"growth: concurrency {c} skipped (time budget spent)")
                continue
            self.set_concurrency(c)
            size = self.sizes.concurrency_steps
            steps = max(1, size // self.sizes.growth_lane) * self.sizes.growth_lane
            for rep in range(self.sizes.reps):
                for side, fn in self._lanes_sides(size).items():
                    self.measure("concurrency", {"c": c, "steps": steps}, rep, side, steps, fn)
        self.set_concurrency(default_c)

    def scenario_foreach(self) -> None:
        """A growth row: one ``for_each`` of ``foreach_items`` instances, fanned out, then
        cancelled (bench_fanout.py: its own Redis and worker; figures, not assertions)."""
        cmd = [sys.executable, str(SCRIPTS / "bench_fanout.py")]
        cmd += ["--items", str(self.sizes.foreach_items), "--concurrency", str(self.concurrency)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "BENCH_"))}
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
            )
        except subprocess.TimeoutExpired:
            self.problems.append("foreach: no result in 1200 s")
            return
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            self.problems.append(f"foreach: exit {proc.returncode}: {proc.stderr[-2000:]}")
            return
        self.foreach = json.loads(lines[-1])

    def scenario_perstep(self) -> None:
        """Per-step cost counted (commands, bytes, round trips), in a process of its own:
        bench_perstep.py starts its own Redis and workers, one side at a time."""
        out = self.workdir / "perstep.json"
        cmd = [sys.executable, str(SCRIPTS / "bench_perstep.py"), "--json", str(out)]
        cmd += ["--runs", str(self.sizes.perstep_runs), "--concurrency", str(self.concurrency)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "BENCH_"))}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            self.problems.append(f"perstep: exit {proc.returncode}: {proc.stderr[-2000:]}")
            return
        self.perstep = json.loads(out.read_text())

    def scenario_peers(self) -> None:
        """The same 5-step chain in runbook-celery and in every peer installed for the bench."""
        root = self.workdir / "peers"
        runs = self.sizes.reps
        extra = [*self.rb_worker.pids(), *([self.redis.proc.pid] if self.redis else [])]
        path = self.files.chain(bench_peers.STEPS)
        rb = bench_peers.measure_runbook(path, self.env, root / "runbook-celery", runs, 60, extra)
        self.peers["runbook-celery"] = rb
        if rb.status != "ok":
            self.recover()
        for name, peer in bench_peers.PEERS.items():
            usable, why = bench_peers.status(name, self.peers_dir)
            left = self.sizes.budget - self.elapsed()
            if not usable:
                status = why
            elif not self.sizes.peers:
                status = "installed; not run by --smoke"
            elif left < bench_peers.MIN_BUDGET:
                status = "skipped (time budget spent)"
            else:
                print(f"[{self.elapsed():6.0f}s] peers: {name} ...", file=sys.stderr, flush=True)
                timeout = min(bench_peers.WATCHDOG, left)
                result = bench_peers.measure_peer(name, root / name, runs, timeout, self.peers_dir)
                if result.status.startswith("hung") and timeout < bench_peers.WATCHDOG:
                    result.status = f"cut off after {timeout:.0f} s (time budget spent); killed"
                self.peers[name] = result
                continue
            version = bench_peers.installed_version(name, self.peers_dir)
            self.peers[name] = bench_peers.PeerResult(peer.engine, version, status)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop everything


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    sizes = sizes_for(args)
    chosen = [s for s in SCENARIOS if s in args.scenarios.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="runbook-bench-"))
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python scripts/bench.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "packages": package_versions(),
        "revision": git_revision(ROOT),
        "scenarios": chosen,
        "sizes": sizes,
        "concurrency": args.concurrency,
        "loglevel": args.loglevel,
    }
    bench = Bench(sizes, args.concurrency, workdir, args.loglevel)
    code = 0
    try:
        bench.start()
        bench.timings["start-up"] = bench.elapsed()
        assert bench.redis is not None
        meta["redis"] = bench.redis.describe()
        meta["worker_command"] = " ".join(bench.rb_worker.command()[1:])
        for name in chosen:
            print(f"[{bench.elapsed():6.0f}s] {name} ...", file=sys.stderr, flush=True)
            t0 = bench.elapsed()
            try:
                getattr(bench, f"scenario_{name}")()
            finally:
                bench.timings[name] = bench.elapsed() - t0
    except (KeyboardInterrupt, SystemExit) as exc:
        bench.problems.append(f"interrupted ({type(exc).__name__})")
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
    except Exception:
        bench.problems.append("harness error:\n" + traceback.format_exc())
        code = 1
    finally:
        bench.stop()
    meta["duration"] = bench.elapsed()
    meta["load_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    bench_report.write(args.out, meta, bench, json_path=args.json)
    print(f"[{bench.elapsed():6.0f}s] wrote {args.out}", file=sys.stderr)
    if args.keep:
        print(f"logs kept in {workdir}", file=sys.stderr)
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
