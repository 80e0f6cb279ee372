#!/usr/bin/env python3
"""Reliability battery: lost workers, Redis restarts, load, credentials. Writes the figures.

    python scripts/reliability.py --all                # full size; writes docs/reliability.md
    python scripts/reliability.py --ci --soak          # the CI size of one scenario
    python scripts/reliability.py --all --json out.json --out /tmp/rel.md

Everything runs on a private redis-server (AOF everysec, noeviction, as docker-compose.yml)
on a free loopback port and on Celery workers started here; all of it is killed at the end,
after an error or a watchdog. The Redis on port 6379 is never touched. Exit code 0 when
nothing was lost, duplicated, hung or leaked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from reliability_infra import ROOT, Hung, RedisServer, Worker, redis_binary, watchdog

LEASE_SECONDS = 4
STALL_S = 5 * LEASE_SECONDS  # no event for this long: what is still open is hanging
SCENARIOS = ("soak", "redis_restart", "load", "security", "tls")


@dataclass(frozen=True)
class Sizes:
    soak_runs: int = 200
    soak_workers: int = 3
    soak_concurrency: int = 4
    soak_kill_every: float = 4.0
    soak_step: str = "sleep 0.$(( RANDOM % 8 + 2 ))"  # 0.2-0.9 s
    restart_runs: int = 100
    restart_after_runs: int = 20  # submitted once Redis is back
    restart_down: float = 3.0
    load_runs: int = 1000
    load_workers: int = 2
    load_concurrency: int = 4
    watchdog: float = 1200.0


FULL = Sizes()
CI = Sizes(
    soak_runs=20,
    soak_concurrency=2,
    soak_kill_every=2.5,
    soak_step="sleep 0.$(( RANDOM % 6 + 4 ))",  # 0.4-0.9 s: keeps the CI workers busy
    restart_runs=16,
    restart_after_runs=4,
    restart_down=2.0,
    load_runs=100,
    watchdog=150.0,
)


class Battery:
    """The private Redis, the environment of workers and clients, and the run store."""

    def __init__(self, workdir: Path, sizes: Sizes, seed: int) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.rng = random.Random(seed)
        self.server = RedisServer(workdir / "redis")
        tag = uuid.uuid4().hex[:8]
        self.queue = f"rel-{tag}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
        self.env = {
            **base,
            "RUNBOOK_REDIS_URL": self.server.url(0),
            "RUNBOOK_BROKER_URL": self.server.url(0),
            "RUNBOOK_PREFIX": f"rel-{tag}",
            "RUNBOOK_QUEUE": self.queue,
            "RUNBOOK_LEASE_SECONDS": str(LEASE_SECONDS),
            "RUNBOOK_KILL_GRACE": "2",
            "RUNBOOK_SHUTDOWN_GRACE": "5",
        }
        os.environ.update(self.env)  # before runbook_celery is imported: it reads them once
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.workers: list[Worker] = []

        from runbook_celery.core.settings import get_settings
        from runbook_celery.store import RunStore
        from runbook_celery.store.redisconn import client_for

        settings = get_settings()
        self.store = RunStore(client_for(settings.redis_url), settings.prefix, settings.retention)
        self.broker = client_for(settings.broker_url)

    def start_workers(self, label: str, n: int, concurrency: int) -> list[Worker]:
        ws = [Worker(f"{label}{i}", self.env, self.logdir, concurrency) for i in range(n)]
        self.workers += ws
        for w in ws:
            w.start()
        return ws

    def stop_workers(self, ws: list[Worker]) -> None:
        for w in ws:
            w.stop()

    def close(self) -> None:
        for w in self.workers:
            w.sigkill()
        self.server.stop()


def _workflows(b: Battery, name: str, sleep: str) -> tuple[list[Any], Path]:
    from reliability_runs import (
        CANVAS_SHAPE,
        DYNAMIC_SHAPE,
        FAN_EXTRAS,
        FAN_PARAMS,
        FAN_SHAPE,
        step_body,
        write_workflow,
    )

    from runbook_celery.definition.loader import load_workflow

    folder = b.workdir / name
    folder.mkdir(exist_ok=True)
    exec_log = folder / "executions.log"
    body = step_body(exec_log, sleep)
    canvas = write_workflow(folder, f"{name}-canvas", CANVAS_SHAPE, body)
    dynamic = write_workflow(folder, f"{name}-dynamic", DYNAMIC_SHAPE, body)
    fan = write_workflow(folder, f"{name}-fan", FAN_SHAPE, body, FAN_EXTRAS, FAN_PARAMS)
    return [load_workflow(canvas), load_workflow(dynamic), load_workflow(fan)], exec_log


def _submit(loaded: list[Any], n: int) -> list[str]:
    from runbook_celery import submit

    return [submit(loaded[i % len(loaded)]).id for i in range(n)]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---------------------------------------------------------------------------- scenarios


def soak(b: Battery) -> dict[str, Any]:
    """SIGKILL a random worker (whole process group) every few seconds, restarting it."""
    from reliability_runs import Tracker, recovery_delays, verify

    s = b.sizes
    loaded, exec_log = _workflows(b, "soak", s.soak_step)
    workers = b.start_workers("soak", s.soak_workers, s.soak_concurrency)
    tracker = Tracker(b.store)
    t0 = time.monotonic()
    run_ids = _submit(loaded, s.soak_runs)
    kills: dict[str, float] = {}  # node name -> when it was SIGKILLed
    next_kill = time.monotonic() + s.soak_kill_every

    def chaos() -> None:
        nonlocal next_kill
        if time.monotonic() < next_kill:
            return
        victim = b.rng.choice(workers)
        victim.sigkill()
        kills[victim.nodename] = time.time()
        victim.start()
        next_kill = time.monotonic() + s.soak_kill_every

    open_runs = tracker.wait(run_ids, t0 + s.watchdog - 60, tick=chaos, stall_s=STALL_S)
    elapsed = time.monotonic() - t0
    b.stop_workers(workers)
    v = verify(b.store, run_ids, exec_log=exec_log, broker=b.broker, queue=b.queue)
    delays, unexplained = recovery_delays(exec_log, kills)
    return {
        "workers": s.soak_workers,
        "concurrency": s.soak_concurrency,
        "kill_every_s": s.soak_kill_every,
        "kills": len(kills),
        "killed": list(kills),
        "open_at_deadline": len(open_runs),
        "elapsed_s": round(elapsed, 1),
        "recovery_delay_max_s": round(max(delays), 2) if delays else None,
        "recovery_delay_median_s": round(statistics.median(delays), 2) if delays else None,
        "recovered_steps": len(delays),
        "repeats_not_after_a_kill": unexplained,
        **v.summary(),
    }


def redis_restart(b: Battery) -> dict[str, Any]:
    """Stop Redis mid-run (SIGTERM, then separately SIGKILL) and bring it back on the same port."""
    s = b.sizes
    workers = b.start_workers("restart", 2, 4)
    loaded, exec_log = _workflows(b, "restart", "sleep 0.$(( RANDOM % 6 + 3 ))")
    cases = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        cases[sig.name] = _restart_case(b, workers, loaded, exec_log, sig)
    alive = [w.nodename for w in workers if w.proc is not None and w.proc.poll() is None]
    logs = "".join(w.logs() for w in workers)
    b.stop_workers(workers)
    return {
        "cases": cases,
        "workers_alive_after": f"{len(alive)}/{len(workers)}",
        "worker_log_connection_lost": logs.count("Connection to broker lost"),
        "worker_log_reconnected": logs.count("Connected to redis://"),
        "down_s": s.restart_down,
        "clean": all(c["clean"] for c in cases.values()) and len(alive) == len(workers),
    }


def _restart_case(
    b: Battery, workers: list[Worker], loaded: list[Any], exec_log: Path, sig: signal.Signals
) -> dict[str, Any]:
    from reliability_runs import Tracker, verify

    from runbook_celery import BackendUnavailable, submit

    s = b.sizes
    tracker = Tracker(b.store)
    run_ids = _submit(loaded, s.restart_runs)
    # restart while steps of both kinds of run (canvas and dynamic) are running
    tracker.wait(
        run_ids,
        time.monotonic() + 60,
        until=lambda: tracker.running_of("-canvas") >= 2 and tracker.running_of("-dynamic") >= 2,
    )
    before = {
        "runs_ended": len(tracker.ended),
        "steps_running": {
            "canvas": tracker.running_of("-canvas"),
            "dynamic": tracker.running_of("-dynamic"),
        },
    }
    t_down = time.monotonic()
    b.server.kill(sig)
    probe_t = time.monotonic()
    try:
        submit(loaded[0])
        probe = "accepted while Redis was down (unexpected)"
    except BackendUnavailable as exc:
        probe = f"BackendUnavailable after {time.monotonic() - probe_t:.2f}s: {exc}"
    time.sleep(max(0.0, s.restart_down - (time.monotonic() - t_down)))  # the outage itself
    b.server.start()
    t_up = time.monotonic()
    after_ids = _submit(loaded, s.restart_after_runs)  # the same client, reconnected
    open_runs = tracker.wait(run_ids + after_ids, t_up + max(60, s.watchdog / 3), stall_s=STALL_S)
    done = time.monotonic()
    v = verify(b.store, run_ids + after_ids, exec_log=exec_log, broker=b.broker, queue=b.queue)
    return {
        "signal": sig.name,
        "runs_before": len(run_ids),
        "runs_after_restart": len(after_ids),
        "at_restart": before,
        "submit_while_down": probe,
        "down_s": round(t_up - t_down, 1),
        "all_ended_s_after_restart": None if open_runs else round(done - t_up, 1),
        "client_redis_errors": tracker.redis_errors,
        "workers_alive": sum(1 for w in workers if w.proc is not None and w.proc.poll() is None),
        **v.summary(),
    }


def load(b: Battery) -> dict[str, Any]:
    """Submit runs as fast as submit() returns against 2 workers; throughput and RSS."""
    from reliability_runs import CANVAS_SHAPE, Tracker, step_body, verify, write_workflow

    from runbook_celery.definition.loader import load_workflow

    s = b.sizes
    folder = b.workdir / "load"
    folder.mkdir(exist_ok=True)
    exec_log = folder / "executions.log"
    wf = load_workflow(write_workflow(folder, "load", CANVAS_SHAPE, step_body(exec_log, "true")))
    workers = b.start_workers("load", s.load_workers, s.load_concurrency)
    tracker = Tracker(b.store)
    warm = _submit([wf], 10)  # imports and connections happen on the first tasks
    if tracker.wait(warm, time.monotonic() + 60):
        raise RuntimeError("warm-up runs did not finish in 60s")
    rss_before = [round(w.rss_mb(), 1) for w in workers]
    rss_peak = list(rss_before)

    def sample() -> None:
        for i, w in enumerate(workers):
            rss_peak[i] = max(rss_peak[i], round(w.rss_mb(), 1))

    t0 = time.monotonic()
    run_ids = _submit([wf], s.load_runs)
    t_submitted = time.monotonic()
    open_runs = tracker.wait(
        run_ids, t0 + s.watchdog - 60, tick=sample, block_s=1.0, stall_s=STALL_S
    )
    t_done = time.monotonic()
    rss_after = [round(w.rss_mb(), 1) for w in workers]
    b.stop_workers(workers)
    v = verify(b.store, run_ids, exec_log=exec_log, broker=b.broker, queue=b.queue)
    wall = t_done - t0
    return {
        "workers": s.load_workers,
        "concurrency": s.load_concurrency,
        "submit_s": round(t_submitted - t0, 2),
        "submit_per_s": round(len(run_ids) / (t_submitted - t0), 1),
        "wall_s": round(wall, 2),
        "runs_per_s": round(len(run_ids) / wall, 1),
        "steps_per_s": round(len(run_ids) * 5 / wall, 1),
        "rss_mb_before": rss_before,
        "rss_mb_peak": rss_peak,
        "rss_mb_after": rss_after,
        "open_at_deadline": len(open_runs),
        **v.summary(),
    }


# ---------------------------------------------------------------------------- driver


def _environment() -> dict[str, Any]:
    versions = {}
    for pkg in ("runbook-celery", "celery", "kombu", "redis"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "?"
    binary = redis_binary() or "?"
    out = os.popen(f"{binary} --version").read().strip()
    return {
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "redis_server": out.split(" sha=")[0],
        "packages": versions,
        "lease_seconds": LEASE_SECONDS,
    }


def run_battery(
    chosen: list[str], sizes: Sizes, label: str, seed: int, keep: bool
) -> dict[str, Any]:
    from reliability_security import security, tls

    workdir = Path(tempfile.mkdtemp(prefix="runbook-reliability-"))
    results: dict[str, Any] = {
        "size": label,
        "seed": seed,
        "sizes": asdict(sizes),
        "environment": _environment(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    battery: Battery | None = None
    funcs: dict[str, Callable[[Battery], dict[str, Any]]] = {
        "soak": soak,
        "redis_restart": redis_restart,
        "load": load,
    }
    try:
        for name in chosen:
            t0 = time.monotonic()
            print(f"[reliability] {name} ...", file=sys.stderr, flush=True)
            try:
                with watchdog(sizes.watchdog, name):
                    if name in funcs:
                        if battery is None:
                            battery = Battery(workdir, sizes, seed)
                        res = funcs[name](battery)
                    elif name == "security":
                        res = security(workdir / "security")
                    else:
                        res = tls(workdir / "tls")
            except (Hung, RuntimeError, redis.RedisError) as exc:
                res = {"clean": False, "error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            res["scenario_s"] = round(time.monotonic() - t0, 1)
            results[name] = res
            print(f"[reliability] {name}: {json.dumps(res)[:2000]}", file=sys.stderr, flush=True)
            if battery is not None:
                for w in battery.workers:  # nothing of a scenario outlives it
                    w.sigkill()
    finally:
        if battery is not None:
            battery.close()
        if keep:
            print(f"[reliability] kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--soak", action="store_true", help="SIGKILL random workers during runs")
    p.add_argument("--redis-restart", action="store_true", help="restart Redis mid-run")
    p.add_argument("--load", action="store_true", help="many runs against 2 workers")
    p.add_argument("--security", action="store_true", help="password URL: no leak anywhere")
    p.add_argument("--tls", action="store_true", help="rediss:// with a self-signed cert")
    p.add_argument("--all", action="store_true", help="every scenario")
    p.add_argument("--ci", action="store_true", help="the small size CI runs")
    p.add_argument("--soak-runs", type=int)
    p.add_argument("--soak-kill-every", type=float, help="seconds between kills")
    p.add_argument("--restart-runs", type=int)
    p.add_argument("--load-runs", type=int)
    p.add_argument("--watchdog", type=float, help="seconds per scenario before giving up")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, help="markdown report (default with --all: docs/)")
    p.add_argument("--json", type=Path, help="raw figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument("--render", type=Path, help="only write --out from an earlier --json file")
    args = p.parse_args(argv)
    if args.render:
        from reliability_report import render

        out = args.out or ROOT / "docs" / "reliability.md"
        out.write_text(render(json.loads(args.render.read_text())))
        return 0
    chosen = [
        name
        for name, flag in zip(
            SCENARIOS,
            (args.soak, args.redis_restart, args.load, args.security, args.tls),
            strict=True,
        )
        if flag or args.all
    ]
    if not chosen:
        p.error("choose a scenario (--soak, --redis-restart, --load, --security, --tls) or --all")
    if redis_binary() is None:
        print("redis-server is not on PATH", file=sys.stderr)
        return 2
    sizes = CI if args.ci else FULL
    overrides = {
        "soak_runs": args.soak_runs,
        "soak_kill_every": args.soak_kill_every,
        "restart_runs": args.restart_runs,
        "load_runs": args.load_runs,
        "watchdog": args.watchdog,
    }
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: blocks
    results = run_battery(chosen, sizes, "ci" if args.ci else "full", seed, args.keep)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    out = args.out or (ROOT / "docs" / "reliability.md" if args.all and not args.ci else None)
    if out:
        from reliability_report import render

        out.write_text(render(results))
        print(f"[reliability] wrote {out}", file=sys.stderr)
    ok = all(results[name].get("clean") for name in chosen)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
