#!/usr/bin/env python3
"""runbook-celery on several hosts with network faults between them (Linux namespaces).

    sudo python scripts/netlab.py --profile ci            # a few minutes (tests/test_netlab.py)
    sudo python scripts/netlab.py --profile full          # writes docs/reliability.md's
                                                          # multi-host section
    sudo python scripts/netlab.py -s baseline,redis-crash --out /tmp/nl
    sudo python scripts/netlab.py cleanup                 # what a SIGKILLed run left
    python scripts/netlab.py report --out DIR [--write-docs]   # count a finished lab again

Builds a Redis host, two worker hosts and a client host on a bridge (netlab_lab.py), runs
the scenarios (netlab_scenarios.py) and counts, per scenario: runs, extra executions,
concurrent copies, stale results recorded, hung runs and recovery times
(netlab_analyse.py). Needs root, iproute2, iptables (nftables-backed is fine) and
redis-server; uses this interpreter's runbook-celery. Everything it creates is removed on
exit, also after an error or Ctrl-C. Exit code 0 when every scenario is clean (every run
succeeded, no concurrent copy, no stale result, no hung run, every trigger --wait exit 0),
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from netlab_analyse import requeues, verdict
from netlab_lab import WORKERS, Lab, cleanup_stale
from netlab_scenarios import DESCRIPTIONS, SHAPES, Profile, Scenarios, run_scenario

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- netlab:begin -->", "<!-- netlab:end -->"
LEASE = 4
PROFILES = {
    "ci": Profile(
        runs=6,
        long_runs=4,
        long_cycles=1,
        short_cycles=2,
        client_cuts=(10.0,),
        scenarios=(
            "baseline",
            "partition-long-drop",
            "partition-short",
            "delay-loss",
            "client-partition",
            "redis-restart",
            "redis-crash",
        ),
    ),
    "full": Profile(
        runs=40,
        long_runs=20,
        long_cycles=3,
        short_cycles=8,
        client_cuts=(10.0, 10.0, 30.0),
        scenarios=tuple(DESCRIPTIONS),
    ),
}
T0 = time.time()


def log(msg: str) -> None:
    print(f"[netlab +{time.time() - T0:6.1f}s] {msg}", flush=True)


def clean(v: dict[str, Any]) -> bool:
    """Every run succeeded, nothing concurrent, stale, hung or out of order."""
    if "error" in v:
        return False
    if "cases" in v:
        return all(c["exit_code"] == 0 for c in v["cases"])
    return (
        v["succeeded"] == v["runs"]
        and not v["submit_errors"]
        and v["concurrent_copies"] == 0
        and v["stale_results"] == 0
        and not v["hung"]
        and not v["order_violations"]
        and not v["duplicate_step_succeeded"]
        and not v.get("unsubmitted_runs_recorded")
    )


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "netlab needs root (ip netns, iptables)"
    for tool in ("ip", "iptables", "redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install iproute2 iptables redis-server)"
    return None


def run(args: argparse.Namespace) -> int:
    if problem := preflight():
        print(problem, file=sys.stderr)
        return 2
    profile = PROFILES[args.profile]
    names = args.scenarios.split(",") if args.scenarios else list(profile.scenarios)
    unknown = [n for n in names if n not in DESCRIPTIONS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; known: {', '.join(DESCRIPTIONS)}", file=sys.stderr)
        return 2
    out = (args.out or Path(tempfile.mkdtemp(prefix="netlab-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "profile": args.profile,
        "lease_s": LEASE,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "out": str(out),
        "scenarios": {},
    }

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    # a last resort: a stuck lab is torn down (the finally below) after --max-minutes
    watchdog = threading.Timer(args.max_minutes * 60, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.daemon = True
    watchdog.start()
    lab = Lab(out, LEASE, log)
    try:
        lab.up()
        lab.start_redis()
        lab.start_workers()
        scenarios = Scenarios(lab, profile, args.seed, log)
        for name in names:
            log(f"=== {name}: {DESCRIPTIONS[name]}")
            t = time.monotonic()
            try:
                v = run_scenario(scenarios, name)
            except Exception as exc:  # reported, and the next scenario still runs
                traceback.print_exc()
                v = {"error": f"{type(exc).__name__}: {exc}"}
            v["scenario_s"] = round(time.monotonic() - t, 1)
            v["clean"] = clean(v)
            report["scenarios"][name] = v
            log(f"=== {name}: {summary(v)}")
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc}); cleaning up")
        report["interrupted"] = str(exc)
    finally:
        watchdog.cancel()
        lab.down()
    report["versions"] = versions()
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.write_docs if args.write_docs is not None else args.profile == "full":
        write_docs(render(report))
        log(f"wrote the multi-host section of {DOCS}")
    log(f"report: {out / 'report.md'}")
    ok = "interrupted" not in report and all(v["clean"] for v in report["scenarios"].values())
    return 0 if ok else 1


def summary(v: dict[str, Any]) -> str:
    if "error" in v:
        return f"ERROR {v['error']}"
    if "cases" in v:
        return "; ".join(
            f"cut {c['cut_s']} s -> exit {c['exit_code']} {c['exit_after_heal_s']} s after heal"
            for c in v["cases"]
        )
    return (
        f"runs {v['runs']} succeeded {v['succeeded']} failed {len(v['failed'])} "
        f"hung {len(v['hung'])} extra executions {v['extra_executions']} concurrent "
        f"{v['concurrent_copies']} stale {v['stale_results']} recovery {v['recovery_s']}"
    )


def versions() -> dict[str, str]:
    import subprocess

    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    found = re.search(r"v=(\S+)", redis_v.stdout)
    return {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
        "redis-server": found.group(1) if found else "?",
        **{p: metadata.version(p) for p in ("runbook-celery", "celery", "kombu", "redis")},
    }


def _rec(v: dict[str, Any], key: str = "recovery_s") -> str:
    r = v.get(key)
    return "-" if not r else f"{r['max']:.1f} (median {r['median']:.1f})"


def _unsubmitted(v: dict[str, Any]) -> str:
    recorded = len(v.get("unsubmitted_runs_recorded", []))
    return f"{len(v['submit_errors'])}" + (f" ({recorded} recorded anyway)" if recorded else "")


def render(report: dict[str, Any]) -> str:
    """The multi-host section of docs/reliability.md."""
    ver = report.get("versions", {})
    lines = [
        BEGIN,
        "## Multi-host: network faults between hosts",
        "",
        f"Produced by `python scripts/netlab.py --profile {report['profile']}` "
        f"({report['started']}); the CI profile runs in `tests/test_netlab.py`. Four hosts "
        "in Linux network namespaces on one bridge: Redis (AOF everysec, noeviction), two "
        "workers (`--concurrency 2`, `RUNBOOK_LEASE_SECONDS=4`) and a client that submits "
        "runs of two 5-step workflows (a canvas and a DAG run by dynamic dispatch). Each step "
        "logs its start, a heartbeat every 0.25 s and its end to a file on a path all hosts "
        "share outside the network under test; from those lines the counts below are made.",
        "",
        f"Versions: runbook-celery {ver.get('runbook-celery')}, celery {ver.get('celery')}, "
        f"kombu {ver.get('kombu')}, redis-py {ver.get('redis')}, redis-server "
        f"{ver.get('redis-server')}, Python {ver.get('python')}, Linux {ver.get('kernel')}, "
        f"{ver.get('cpus')} CPUs.",
        "",
        "- **extra executions**: a step's Bash started more than once (a step cut off from "
        "Redis for ½ lease is stopped by its worker and runs again elsewhere);",
        "- **concurrent copies**: a copy of a step logged a line after another copy of it had "
        "started;",
        "- **stale results**: the recorded outputs came from an attempt older than the newest "
        "copy that started;",
        "- **not submitted**: `submit()` failed (counted, never retried: a submit while Redis "
        "is down fails by design); a run recorded in Redis all the same is counted too;",
        "- **hung**: a run not ended when nothing had happened anywhere for 32 s;",
        "- **recovery**: for a worker cut off, from the cut until every step it was running "
        "was available to a worker again (put back or published again by the other worker's "
        "reconciler, handed back by its holder after the heal, or running again); for Redis, "
        "from Redis answering again until the first step started. **running again**: until "
        "every such step was running again, which also waits for a free worker process "
        "(in the long partitions both workers are busy with 12-16 s steps). Seconds, max "
        "(median) over the faults.",
        "",
        "| scenario | runs | not submitted | succeeded | failed | hung | extra executions "
        "| concurrent copies "
        "| stale results | results discarded | faults | recovery s | running again s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in report["scenarios"].items():
        if "error" in v:
            lines.append(f"| {name} | error: {v['error']} |" + " |" * 11)
            continue
        if "cases" in v:
            continue
        lines.append(
            f"| {name} | {v['runs']} | {_unsubmitted(v)} | {v['succeeded']} | "
            f"{len(v['failed'])} | "
            f"{len(v['hung'])} | {v['extra_executions']} | {v['concurrent_copies']} | "
            f"{v['stale_results']} | {v['results_discarded']} | {len(v['faults'])} | {_rec(v)} "
            f"| {_rec(v, 'running_again_s')} |"
        )
    lines += [
        "",
        "Where extra executions come from: a worker that cannot renew a step's lease for ½ "
        "lease (2 s here) stops the step itself, records nothing, and the step runs again "
        "once its lease has expired: on the other worker, or on the same one after the heal. "
        "That happens to every step a worker runs while it is cut off for ½ lease or longer "
        "(the partitions) and to every running step while Redis is down that long (restart "
        "3 s, crash 5 s). A late result of such a copy is refused by fencing and recorded "
        "as a `step_result_discarded` event (results discarded), never as the step's result.",
        "",
    ]
    for name, v in report["scenarios"].items():
        lines.append(f"- **{name}**: {DESCRIPTIONS[name]}.")
        for case in v.get("cases", []):
            said = " / ".join(s for s in case["stderr"] if "Redis" in s) or "nothing on stderr"
            lines.append(
                f"  - cut {case['cut_s']} s: `trigger --wait` exit {case['exit_code']}, "
                f"{case['exit_after_heal_s']} s after the heal; it said: {said}"
            )
    lines += [
        "",
        "Bugs this test found, now fixed (each with a regression test):",
        "",
        "1. A run whose `submit()` failed with exit 3 because Redis went away between "
        "recording the run and publishing it was left recorded (removing it failed too), and "
        "ran once Redis was back: a caller who submitted again got two runs. Removing it now "
        "rides out the blip like a following client, and if Redis stays away the error "
        "names the run (`tests/test_client_reconnect.py`).",
        "2. `trigger --wait`, `watch`, `logs --follow` and `Run.wait()` gave up (exit 3) on a "
        "Redis restart of a few seconds; they now reconnect for "
        "`RUNBOOK_CLIENT_RECONNECT_SECONDS` and resume after the last event or line.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def recount(out: Path) -> dict[str, Any]:
    """The report of a finished lab, counted again from the files it left in ``out``."""
    report: dict[str, Any] = json.loads((out / "results.json").read_text())
    logs = [out / f"worker-{h}.log" for h in WORKERS]
    for name, v in report["scenarios"].items():
        path = out / f"{name}.result.json"
        if "cases" in v or "error" in v or not path.exists():
            continue
        result = json.loads(path.read_text())
        result["needs"] = {f"netlab-{s}": shape for s, shape in SHAPES.items()}
        faults = [{k: f[k] for k in ("kind", "host", "t_start", "t_end")} for f in v["faults"]]
        fresh = verdict(out / "exec", result, faults, requeues(logs))
        keep = {k: v[k] for k in ("scenario_s", "impairment") if k in v}
        report["scenarios"][name] = {**fresh, **keep, "clean": clean(fresh)}
    return report


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOCS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="netlab.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("command", nargs="?", default="run", choices=("run", "cleanup", "report"))
    p.add_argument("--profile", choices=tuple(PROFILES), default="ci")
    p.add_argument("-s", "--scenarios", help=f"comma-separated; known: {', '.join(DESCRIPTIONS)}")
    p.add_argument("--out", type=Path, help="folder for logs and the report (default: temp)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--seed", type=int, default=20261201)
    p.add_argument("--max-minutes", type=float, default=60)
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--write-docs", action="store_true", default=None)
    docs.add_argument("--no-write-docs", dest="write_docs", action="store_false")
    args = p.parse_args(argv)
    if args.command == "cleanup":
        if problem := preflight():
            print(problem, file=sys.stderr)
            return 2
        for name in cleanup_stale():
            print(f"deleted namespace {name}")
        return 0
    if args.command == "report":
        if args.out is None:
            p.error("report needs --out DIR (a finished lab's folder)")
        report = recount(args.out.resolve())
        (args.out / "report.md").write_text(render(report))
        if args.write_docs:
            write_docs(render(report))
        print(render(report))
        return 0 if all(v["clean"] for v in report["scenarios"].values()) else 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
