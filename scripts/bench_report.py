"""Turn the benchmark's records into docs/benchmarks.md: tables, targets, one plot."""

# The report is Markdown for people: it uses ×, – and → on purpose.
# ruff: noqa: RUF001, RUF003

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench_config import FLOOR, RAW, RB, SIDES
from bench_stats import Records, cell_name, fmt, percentile, table
from bench_targets import targets_section

# ---------------------------------------------------------------------------- sections


def chains_section(rec: Records) -> tuple[str, list[tuple[str, float, str]]]:
    """Scenario 1 tables, and the worst runbook/raw ratio per cell for the targets."""
    sides = rec.sides()
    celery_sides = [s for s in sides if s != FLOOR]
    rows_a, rows_b, ratios = [], [], []
    for cell in rec.cells():
        steps = cell["N"] * cell["M"]
        rows_a.append(
            [cell["N"], cell["M"], steps]
            + [fmt(rec.walls(cell, s), digits=3) for s in sides]
            + [fmt(rec.rate(cell, s), digits=0) for s in celery_sides]
        )
        row_b = [cell["N"], cell["M"]]
        row_b += [fmt(rec.above_floor(cell, s), 1000) for s in celery_sides]
        for s in celery_sides:
            if s != RAW:
                r = rec.ratio(cell, s, RAW)
                row_b.append(fmt(r))
                if r and s == RB:
                    ratios.append((f"chains {cell_name(cell)}", statistics.median(r), fmt(r)))
        row_b.append(fmt(rec.extra(cell, RB, "submit"), 1000 / cell["N"], 1))
        rows_b.append(row_b)
    head_a = ["N", "M", "steps"] + [f"{s} wall s" for s in sides]
    head_a += [f"{s} steps/s" for s in celery_sides]
    head_b = ["N", "M"] + [f"{s} ms/step above floor" for s in celery_sides]
    head_b += [f"{s} / raw Celery" for s in celery_sides if s != RAW]
    head_b += ["runbook submit() ms/run"]
    text = "\n\n".join(
        [
            "Wall time from the first submit to the last result, and throughput:",
            table(head_a, rows_a),
            "Cost above the floor, and ratios computed within each repetition:",
            table(head_b, rows_b),
        ]
    )
    return text, ratios


def fanout_section(rec: Records) -> tuple[str, list[tuple[str, float, str]], dict[str, Any]]:
    sides = rec.sides()
    celery_sides = [s for s in sides if s != FLOOR]
    rows, ratios = [], []
    per_branch: dict[str, list[tuple[int, float]]] = {s: [] for s in sides}
    for cell in rec.cells():
        w = cell["W"]
        row = [w, w + 2] + [fmt(rec.walls(cell, s), digits=3) for s in sides]
        for s in sides:
            values = [x / w for x in rec.walls(cell, s)]
            row.append(fmt(values, 1000))
            if values:
                per_branch[s].append((w, statistics.median(values)))
        for s in celery_sides:
            if s != RAW:
                r = rec.ratio(cell, s, RAW)
                row.append(fmt(r))
                if r and s == RB:
                    ratios.append((f"fan-out W={w}", statistics.median(r), fmt(r)))
        rows.append(row)
    head = ["W", "steps"] + [f"{s} wall s" for s in sides] + [f"{s} ms/branch" for s in sides]
    head += [f"{s} / raw Celery" for s in celery_sides if s != RAW]
    growth: dict[str, Any] = {}
    grow_rows = []
    for s in sides:
        pts = per_branch[s]
        if len(pts) >= 2:
            growth[s] = pts[-1][1] / pts[0][1]
            grow_rows.append([s, f"W={pts[0][0]} → W={pts[-1][0]}", f"{growth[s]:.2f}×"])
    text = "\n\n".join(
        [
            table(head, rows),
            "Growth of the per-branch cost with W (median per-branch cost, largest W / smallest):",
            table(["side", "range", "growth"], grow_rows) if grow_rows else "—",
        ]
    )
    return text, ratios, growth


def latency_section(samples: list[dict[str, Any]], cold: list[dict[str, Any]]) -> tuple[str, dict]:
    out: dict[str, Any] = {}
    rows = []
    for side in SIDES:
        mine = [s for s in samples if s["side"] == side]
        if not mine:
            continue
        start = [s["start"] for s in mine]
        result = [s["result"] for s in mine]
        after = [s["result"] - s["start"] for s in mine]
        out[side] = {
            "start_p50": percentile(start, 50),
            "start_p95": percentile(start, 95),
            "after_p50": percentile(after, 50),
        }
        rows.append(
            [
                side,
                len(mine),
                f"{percentile(start, 50) * 1000:.1f}",
                f"{percentile(start, 95) * 1000:.1f}",
                f"{percentile(result, 50) * 1000:.1f}",
                f"{percentile(result, 95) * 1000:.1f}",
                f"{percentile(after, 50) * 1000:.1f}",
            ]
        )
    head = [
        "side",
        "triggers",
        "submit → step start p50 ms",
        "p95 ms",
        "submit → result p50 ms",
        "p95 ms",
        "result after step start p50 ms",
    ]
    cold_rows = []
    whats: list[str] = []
    for c in cold:
        if c["what"] not in whats:
            whats.append(c["what"])
    for what in whats:
        mine = [c for c in cold if c["what"] == what]
        cpu = [c["cpu"] for c in mine]
        out.setdefault("cold", {})[what] = statistics.median(cpu)
        cold_rows.append(
            [f"`{what}`", len(mine), fmt(cpu, digits=3), fmt([c["wall"] for c in mine], digits=3)]
        )
    text = "\n\n".join(
        [
            table(head, rows) if rows else "—",
            "Cold processes (process time = user + system CPU of the process, from `wait4`):",
            table(["command", "runs", "process time s", "wall s"], cold_rows) if cold_rows else "—",
        ]
    )
    return text, out


def linear_section(rec: Records) -> tuple[str, dict[str, Any]]:
    """One linear workflow per size: wall time, and each size against the smallest."""
    rows, out = [], {}
    cells = rec.cells()
    walls = {c["steps"]: statistics.median(w) for c in cells if (w := rec.walls(c, RB))}
    if not walls:
        return "", out
    small = min(walls)
    for steps, wall in sorted(walls.items()):
        ratio = wall / walls[small]
        rows.append([steps, f"{wall:.1f}", f"{wall / steps * 1000:.1f}", f"{ratio:.1f}×"])
    if len(walls) >= 2:
        big = max(walls)
        out["linear"] = (small, big, walls[big] / walls[small])
    head = ["steps (one chain)", "runbook wall s", "ms/step", "time vs smallest"]
    return table(head, rows), out


def growth_section(
    rec: Records, conc: Records, rss: list[dict[str, Any]], linear: Records | None = None
) -> tuple[str, dict]:
    sides = rec.sides()
    out: dict[str, Any] = {"flat": {}}
    linear_text, linear_out = linear_section(linear) if linear is not None else ("", {})
    out.update(linear_out)
    rows = []
    cells = rec.cells()
    base = (
        statistics.median(rec.per_step(cells[0], RB))
        if cells and rec.per_step(cells[0], RB)
        else None
    )
    for cell in cells:
        row = [cell["steps"]] + [fmt(rec.per_step(cell, s), 1000) for s in sides]
        row.append(fmt(rec.ratio(cell, RB, RAW)))
        ps = rec.per_step(cell, RB)
        if base and ps:
            out["flat"][cell["steps"]] = statistics.median(ps) / base
            row.append(f"{statistics.median(ps) / base:.2f}×")
        else:
            row.append("—")
        row.append(fmt(rec.extra(cell, RB, "submit"), 1000, 0))
        rows.append(row)
    head = ["steps"] + [f"{s} ms/step" for s in sides]
    head += ["runbook / raw Celery", "runbook ms/step vs smallest", "runbook submit() ms"]
    conc_rows = []
    for cell in conc.cells():
        row = [cell["c"], cell["steps"]]
        row += [fmt(conc.per_step(cell, s), 1000) for s in conc.sides()]
        row.append(fmt(conc.ratio(cell, RB, RAW)))
        conc_rows.append(row)
    conc_head = ["concurrency", "steps"] + [f"{s} ms/step" for s in conc.sides()]
    conc_head.append("runbook / raw Celery")
    rss_rows = [[r["when"], f"{r[RB]:.1f}", f"{r[RAW]:.1f}"] for r in rss]
    if len(rss) >= 2:
        out["rss"] = (rss[0][RB], rss[-1][RB])
    parts = [table(head, rows) if rows else "—"]
    if conc_rows:
        parts += ["Per-step cost by worker concurrency (floor: thread pool of the same size):"]
        parts += [table(conc_head, conc_rows)]
    if linear_text:
        parts += ["One linear workflow (a single chain, sent in segments):", linear_text]
    if rss_rows:
        parts += [
            "Worker memory (summed VmRSS of the worker and its pool processes, MB):",
            table(["when", f"{RB} worker", f"{RAW} worker"], rss_rows),
        ]
    return "\n\n".join(parts), out


def peers_section(peers: dict[str, Any]) -> str:
    """Scenario 5: one row per engine, runbook-celery first, whatever each one's status."""
    rows = []
    for result in peers.values():
        status = result.status + (f" ({result.note})" if result.note else "")
        rows.append(
            [
                result.engine,
                result.version,
                "—" if result.first is None else f"{result.first:.2f}",
                fmt(result.runs, digits=3),
                "—" if result.peak_rss_mb is None else f"{result.peak_rss_mb:.0f}",
                status,
            ]
        )
    head = [
        "engine",
        "version",
        "first run s",
        "per run s (median [min–max])",
        "peak RSS MB",
        "status",
    ]
    return table(head, rows) if rows else "—"


def cpu_section(scenarios: dict[str, Records]) -> str:
    """CPU per step by process, for the largest cell of each scenario."""
    rows = []
    for name, rec in scenarios.items():
        cells = rec.cells()
        if not cells:
            continue
        cell = max(
            cells, key=lambda c: max((r.steps for r in rec.records if r.cell == c), default=0)
        )
        for side in rec.sides():
            client = rec.cpu_per_step(cell, side, "client")
            worker = rec.cpu_per_step(cell, side, "worker") if side != FLOOR else []
            redis = rec.cpu_per_step(cell, side, "redis")
            wall = rec.per_step(cell, side)
            cmds = [
                r.extra["redis_commands"] / r.steps
                for r in rec.ok(cell, side).values()
                if "redis_commands" in r.extra
            ]
            scripts = [
                r.extra["redis_scripts"] / r.steps
                for r in rec.ok(cell, side).values()
                if "redis_scripts" in r.extra
            ]
            rows.append(
                [
                    f"{name} {cell_name(cell)}",
                    side,
                    fmt(wall, 1000),
                    fmt(client, 1000),
                    fmt(worker, 1000),
                    fmt(redis, 1000),
                    fmt(cmds, digits=1),
                    fmt(scripts, digits=1),
                ]
            )
    head = [
        "scenario",
        "side",
        "wall ms/step",
        "client CPU ms/step",
        "worker CPU ms/step",
        "redis CPU ms/step",
        "Redis commands/step",
        "of which Lua scripts/step",
    ]
    return table(head, rows)


def other_load(records: Iterable[Any], cores: int) -> str:
    """How much of the machine other processes used while we measured (noise)."""
    shares = []
    for r in records:
        if r.status != "ok" or not r.wall or "cpu_machine" not in r.extra:
            continue
        ours = sum(
            r.extra.get(f"cpu_{k}", 0.0) for k in ("client", "rb_worker", "raw_worker", "redis")
        )
        shares.append(max(0.0, r.extra["cpu_machine"] - ours) / (r.wall * cores))
    if not shares:
        return "unknown"
    return (
        f"median {statistics.median(shares):.0%}, 90th percentile {percentile(shares, 90):.0%}"
        f" of {cores} cores (over {len(shares)} measurements)"
    )


# ---------------------------------------------------------------------------- plot


def plot(rec: Records, path: Path) -> str | None:
    """Per-step cost against N, one panel per M; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ms = sorted({c["M"] for c in rec.cells()})
    if not ms:
        return None
    fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 3.6), squeeze=False)
    for ax, m in zip(axes[0], ms, strict=True):
        for side in rec.sides():
            pts = [
                (c["N"], statistics.median(rec.per_step(c, side)) * 1000)
                for c in rec.cells()
                if c["M"] == m and rec.per_step(c, side)
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=side)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_title(f"chains of M={m} steps")
        ax.set_xlabel("N workflows")
        ax.set_ylabel("wall ms per step (median)")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------------------- document


PERSTEP_NOTE = """
Counted, not timed, by `scripts/bench_perstep.py` (its own redis-server; each side's worker
runs alone while its workflows run): chains of 10 steps and fan-outs 1 → 8 → 1, the same
workflows on both sides. Redis commands are `INFO commandstats` deltas (commands a Lua
script runs count too), without the idle ones (a worker's BRPOP loop, health-check PINGs);
round trips are redis-py sends (a pipeline or MULTI is one) counted by a hook in each
process. Targets: commands ≤ 1.5 × raw Celery's, pool round trips ≤ raw Celery's. Redis CPU
is timed and only shown. `tests/test_perstep_cost.py` keeps the ratios under a ceiling.
"""


def perstep_section(data: dict[str, Any]) -> str:
    """Per step, by side and shape, and each target's ratio."""
    samples = data["samples"]
    head = [f"{s['side']}, {s['shape']}" for s in samples]
    rows = [
        ("Redis commands", [s["commands_per_step"] for s in samples]),
        ("bytes into Redis", [s["bytes_in_per_step"] for s in samples]),
        ("Redis CPU, ms (timed)", [s.get("redis_cpu_ms_per_step", "?") for s in samples]),
    ]
    for role in ("pool", "worker main", "client"):
        rows.append(
            (f"round trips: {role}", [s["roundtrips_per_step"].get(role, 0) for s in samples])
        )
    lines = ["| per step | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(str(v) for v in values) + " |" for name, values in rows]
    lines += [
        "",
        "| runbook / raw | commands (target ≤ 1.5) | pool round trips (target ≤ 1.0) |",
        "|---|---|---|",
    ]
    for shape, r in data["ratios_to_raw"].items():
        lines.append(f"| {shape} | {r['commands']:.2f} | {r['pool_roundtrips']:.2f} |")
    names = sorted({n for s in samples for n in s["commands_by_name_per_step"]})
    lines += ["", "Commands by name, per step:", ""]
    lines += ["| command | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for n in names:
        values = [s["commands_by_name_per_step"].get(n, 0) for s in samples]
        lines.append(f"| {n} | " + " | ".join(str(v) for v in values) + " |")
    return "\n".join(lines)


def _kv(mapping: dict[str, Any]) -> str:
    return table(["", ""], [[k, v] for k, v in mapping.items()])


def write(out: Path, meta: dict[str, Any], bench: Any, json_path: Path | None = None) -> None:
    scen = {
        name: Records(bench.records, name)
        for name in ("chains", "fanout", "growth", "concurrency", "linear")
    }
    chains_text, chain_ratios = chains_section(scen["chains"])
    fan_text, fan_ratios, fan_growth = fanout_section(scen["fanout"])
    lat_text, lat = latency_section(bench.latency, bench.cold)
    growth_text, growth = growth_section(
        scen["growth"], scen["concurrency"], bench.rss, scen["linear"]
    )
    foreach = getattr(bench, "foreach", None)
    if foreach:
        growth["foreach"] = foreach
    picture = plot(scen["chains"], out.with_name(out.stem + "-per-step.png"))
    sizes = meta["sizes"]
    chosen = meta["scenarios"]
    doc = [
        "# Benchmarks",
        "",
        f"Produced by `{meta['command']}` on {meta['started']} in "
        f"{meta['duration'] / 60:.1f} min (revision {meta['revision']}). Regenerate with "
        "`python scripts/bench.py` (10–13 minutes on 2 cores, 14-minute budget); "
        "`python scripts/bench.py --smoke --out /tmp/bench.md` is the CI smoke version.",
        "",
        "## Targets",
        "",
        targets_section(chain_ratios + fan_ratios, lat, fan_growth, growth),
        "",
        "## Method",
        "",
        METHOD.format(
            reps=sizes.reps,
            concurrency=meta["concurrency"],
            cap=sizes.max_chain_steps,
            lane=sizes.growth_lane,
            csteps=sizes.concurrency_steps,
            loglevel=meta["loglevel"],
            wd_base=sizes.watchdog_base,
            wd_step=sizes.watchdog_per_step * 1000,
        ).strip(),
        "",
        "Time by phase: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in getattr(bench, "timings", {}).items())
        + ".",
        "",
        "### Machine",
        "",
        _kv(
            {
                **meta["machine"],
                "load after the run (1/5/15 min)": meta.get("load_after", "?"),
                "CPU used by other processes while measuring": other_load(
                    bench.records, meta["machine"].get("usable cores") or 1
                ),
            }
        ),
        "",
        "### Packages",
        "",
        _kv(meta["packages"]),
        "",
        "### Redis and workers",
        "",
        _kv(
            {
                **meta.get("redis", {}),
                "worker": f"`{meta.get('worker_command', '?')}` (raw Celery: same flags, "
                "`-A bench_rawcelery`)",
            }
        ),
        "",
    ]
    if "chains" in chosen:
        doc += ["## 1. Chains: N workflows × M steps", "", chains_text, ""]
        if picture:
            doc += [f"![per-step cost against N]({picture})", ""]
        else:
            doc += ["(plot skipped: matplotlib is not installed; `pip install matplotlib`)", ""]
    if "fanout" in chosen:
        doc += ["## 2. Fan-out / fan-in: 1 → W → 1", "", fan_text, ""]
    if "latency" in chosen:
        doc += ["## 3. Latency", "", LATENCY_NOTE.strip(), "", lat_text, ""]
    if "growth" in chosen or "linear" in chosen:
        doc += ["## 4. Growth", "", GROWTH_NOTE.format(lane=sizes.growth_lane).strip(), ""]
        doc += [growth_text, ""]
    if "foreach" in chosen:
        doc += ["## 4b. Growth: one large `for_each`", "", FOREACH_NOTE.strip(), ""]
        doc += [foreach_section(foreach), ""]
    if any(r.records for r in scen.values()):
        doc += ["## Where the CPU goes", "", CPU_NOTE.strip(), "", cpu_section(scen), ""]
    if "chains" in chosen or "fanout" in chosen:
        doc += ["## Profiling: what was fixed, where the rest goes", "", PROFILE_NOTE.strip(), ""]
    if "peers" in chosen:
        doc += ["## 5. Peers", "", peers_section(bench.peers), ""]
        doc += [PEERS_NOTE.format(runs=sizes.reps).strip(), ""]
    if "perstep" in chosen and getattr(bench, "perstep", None):
        doc += ["## 6. Per step, counted", "", PERSTEP_NOTE.strip(), ""]
        doc += [perstep_section(bench.perstep), ""]
    failures = [r for r in bench.records if r.status != "ok"]
    if failures or bench.problems or bench.notes:
        doc += ["## Problems during this run", ""]
        doc += [
            f"- {r.scenario} {cell_name(r.cell)} rep {r.rep + 1} {r.side}: {r.status}"
            f"{': ' + r.message if r.message else ''}"
            for r in failures
        ]
        doc += [f"- {p}" for p in bench.problems]
        doc += [f"- {n}" for n in bench.notes]
        doc += [""]
    out.write_text("\n".join(doc))
    if json_path is not None:
        payload = {
            "meta": {**meta, "sizes": dataclasses.asdict(sizes)},
            "records": [dataclasses.asdict(r) for r in bench.records],
            "latency": bench.latency,
            "cold": bench.cold,
            "rss": bench.rss,
            "foreach": getattr(bench, "foreach", None),
            "problems": bench.problems,
            "peers": {k: dataclasses.asdict(v) for k, v in bench.peers.items()},
        }
        json_path.write_text(json.dumps(payload, indent=1, default=str))


METHOD = """
- **Sides.** *floor*: the same Bash commands run with `subprocess.run` from a thread pool of
  the workers' concurrency; *raw Celery*: a hand-written canvas (chain / chord / group of
  chains) of one task that runs `subprocess.run(["bash", "-c", cmd])`
  (`scripts/bench_rawcelery.py`), with the worker settings runbook-celery ships (acks_late,
  prefetch 1, reject on worker lost, task events on, JSON; copied from
  `runbook_celery.engine.app`), waited on through a fresh `AsyncResult` of its last task (the
  cheapest wait Celery offers); *runbook-celery*: `submit(path)` of a YAML file, then
  `Run.wait()`; *runbook-celery (AOF)*: the same with Redis switched to `appendonly yes`,
  `appendfsync everysec` for that measurement only (scenario 1). Raw Celery uses Celery's
  stock Redis result backend, which subscribes to a result channel for every task it
  sends; runbook-celery's backend does not (see `runbook_celery/engine/app.py`).
- **Work.** Every step runs `true` in a fresh Bash: `bash -c true` for the floor and raw
  Celery; runbook-celery's runner runs it as `bash -eo pipefail` with its guardian
  wrapper (that wrapper is part of runbook-celery's measured cost).
- **Order.** Sides are interleaved inside each repetition (floor, raw, runbook, AOF; then
  the next cell), and repetitions go round all cells, so drift hits every side alike.
  {reps} repetitions; tables show median [min–max]; ratios are taken within a repetition.
  State databases are flushed before every measurement (queues are empty by then).
  One private redis-server: runbook-celery as shipped, its broker, results and store in
  one database (the broker URL defaults to the store's); raw Celery's broker and
  results in two others.
- **Sizes.** Workers run with `-c {concurrency}` (prefork), loglevel {loglevel}. The default
  run keeps scenario 1 cells with N × M ≤ {cap} steps, so the whole run fits in 15 minutes
  on 2 cores; `--full` adds the rest (100×20, 500×5, 500×20; about 40 minutes). Growth
  workflows are parallel chains of {lane} steps; the concurrency sweep runs {csteps} steps.
- **Watchdog.** Each measurement has a deadline ({wd_base:g} s + {wd_step:g} ms per step);
  a hung one is reported under *Problems*, its workers are killed and restarted, and the
  run goes on.
"""

LATENCY_NOTE = """
Thirty single-step triggers per side, interleaved and spaced 100 ms apart so that each one
meets an idle worker. The step start is measured where the step runs: the step's Bash
prints `$EPOCHREALTIME` (same clock as the client's `time.time()`). *Result after step
start* is submit → result minus submit → start: the step itself plus the path back to the
caller, so a polling interval in `wait()` would show up there.
"""

FOREACH_NOTE = """
One workflow whose second step is a `for_each` over the first step's list of N items
(each instance `sleep 600`), measured by `scripts/bench_fanout.py` on a redis-server and
a worker of its own: *fan out* is the fanned-out step's task, from the worker receiving
it to its end (every instance recorded and the first messages sent), *cancel* is
`Run.cancel()` to the run's final event, with the first instances running.
"""


def foreach_section(data: dict[str, Any] | None) -> str:
    if not data:
        return "Not measured in this run (see the problems below)."
    rows = [
        [
            f"{data['items']:,}",
            f"{data['fan_out_s']:.2f}",
            f"{data['cancel_s']:.2f}",
            data["final_status"],
            data["instances_started"],
            f"{data['redis_bytes'] / 1e6:.1f}",
            f"{data['worker_rss_mb']:.1f}",
        ]
    ]
    head = ["instances", "fan out s", "cancel s", "final status", "instances started"]
    head += ["Redis MB once fanned out", "worker RSS MB"]
    return table(head, rows)


GROWTH_NOTE = """
One workflow per measurement, made of parallel chains of {lane} steps (so Celery's chain
messages stay the same size at every total, and only the workflow's size grows).
*ms/step* is wall time / steps; *vs smallest* compares runbook-celery's per-step cost
with the smallest size in the same run.
"""

CPU_NOTE = """
CPU seconds spent during each measurement, per step: the client is the harness process
(submit, canvas building, waiting; for the floor also the Bash children it waited for),
the worker is the worker's process group including the Bash steps it waited for, and
Redis is `used_cpu_sys + used_cpu_user`. On 2 cores the sum bounds throughput. Redis
commands are counted from `INFO commandstats` (a command run by a Lua script counts too;
idle `BRPOP` polling is left out); a pipeline's commands count one by one.
"""

PEERS_NOTE = """
Every engine runs the same workflow, a chain of 5 steps that each run `true` in a fresh
Bash, written the way its documentation shows (`scripts/bench_peers.py`). **Luigi**: five
`luigi.Task`s chained by `requires()`, each running `bash -c true` and writing a fresh
`LocalTarget`, run with `luigi.build([...], local_scheduler=True)`. **Prefect**: a `@flow`
calling five `@task`s in turn (each gets the previous one's result), with no API URL set,
so Prefect starts its temporary local server (a uvicorn subprocess on SQLite).
**Airflow**: a DAG of five `BashOperator`s joined by `chain()`, run with `dag.test()`,
which is what `airflow dags test <dag_id>` calls: one process, no scheduler, webserver
or executor, a SQLite metadata database migrated at install as `airflow standalone`
would; the status column also times one `airflow dags test` in a fresh process, which
parses and serialises the DAG first. **runbook-celery**: the 5-step YAML chain with
`submit(path).wait()` against the harness's already-running worker and Redis (their
start-up is not counted, their memory is).

Each engine runs in a process of its own, the peer's in its throwaway virtualenv under
`~/.cache/runbook-bench-peers` (`python scripts/bench_peers.py install`; never a project
dependency; peers not installed are listed as such). The process imports the engine and
runs the workflow once: *first run* is from spawning the process to the end of that run
(interpreter start, imports and Prefect's server start-up included). It then runs it
{runs} more times: *per run*. *Peak RSS* is the highest summed VmRSS of that process and
every process under it (Prefect's server, the Bash steps; a child not yet exec'd counts
as its parent), sampled every 50 ms, or the process's own high-water mark (VmHWM) if
higher; for runbook-celery it adds the worker's processes and Redis. Prefect's and Airflow's
databases are fresh copies of what the install prepared. A peer gets 180 s (less when
the run's time budget is nearly spent); one that runs past it is killed with everything
it started and reported, not waited on. Peers run one after the other, after the other
scenarios, on the same machine. Prefect 3.9 ends every flow run by joining its heartbeat
thread, which sleeps in 1-second steps: most of its per-run time is that wait (a flow
with no tasks takes as long).

**Dagu** is not measured: it ships as a Go binary from its GitHub releases (and Docker
Hub, Homebrew), none of which this machine reaches, and no registry it reaches carries
it (PyPI has no `dagu`; npm answers 404 for `dagu` and `@dagu-org/dagu`; Debian has no
package), checked on 2026-12-02.
"""

# Written by hand from profiling sessions (py-spy, cProfile, /proc CPU times, INFO cpu);
# kept in every regenerated report because the harness cannot re-derive it.
PROFILE_NOTE = """
The ratio target is missed. Profiles of both sides (py-spy over the worker's main and pool
processes, 300 workflows × 5 steps) put every extra millisecond in what runbook-celery
records per step; Celery's own share (publish, ack, events, result store) is the same on
both sides.

**Fixed, in order, with the measurement that found each one:**

- One selector and a pidfd supervise Bash, instead of 2 reader threads and a polling
  `wait`: the threads and the 50 ms poll are gone from the profile.
- The run cache is bounded by steps and dropped at run end: worker RSS over 2,500 steps
  went from +45 MB to flat.
- The series-parallel decomposition runs on bitsets, once: a 2,500-step chain compiles in
  27 ms instead of more than 1 s.
- One guardian process per pool process (each step registers its process group with it
  first) instead of a lifeline subshell forked by every step: `run_bash("true")` went from
  2.10 ms wall / 1.46 ms child CPU to the cost of plain `bash -c` (1.5 / 1.2 ms) plus a
  builtin `echo`.
- A finished run's key expiry is set by the finishing Lua only (a second pass re-did it
  from Python): 3 round trips less per run.
- A step's lease-index entry ends inside Celery's result-store transaction, not in a
  separate `ZREM` from `task_postrun`: 1 round trip less per step.
- START and FINISH read the run's and the step's fields with one `HMGET` each: up to 8
  `HGET`s less per step inside Lua.
- `$RUNBOOK_OUTPUT` is created only by steps that write outputs, and the environment is not
  copied for workflows without secrets: about 0.1 ms less per step in the pool process.

**Where the rest goes** (each measured on its own on this machine):

- Two state transitions per step (START claims the step, FINISH records it and hands
  on): 400 µs wall and 224 µs of client CPU per step in isolation (a Redis `PING` costs
  97 µs / 54 µs), plus about 0.3 ms of Redis CPU per step (`INFO cpu`). They carry the
  run record, events, outputs and leases the product promises; they cannot be pipelined
  away, since START must finish before Bash starts and FINISH before the next step may.
- A watch entry written when a step's message reaches a worker (one `ZADD` in the
  worker's main loop per delivery). It was added after the reliability battery showed
  that a Redis restart can drop a delivered-but-not-started message for 6 hours
  (docs/reliability.md); it costs about 0.03 in the ratio.
- Per run, in the client: loading and validating the YAML (0.21 ms), recording the run
  (0.33 ms) and the plan; 1.37 ms for `submit()` against 0.55 ms for Celery's own publish.
  On 2 cores the client, Redis and both pool processes share the CPUs, so this shows in
  the one-step-per-run cells (N = 500, M = 1 is the worst).
- Bigger messages: a step's signature carries its deterministic task id and its Flower
  name (`run=… step=…` for Flower is written into each message's headers as it is
  published, not carried in the signatures), so the first message of a 20-step chain is
  9.3 KB (11.4 KB when the signatures carried it) against raw Celery's 6.3 KB; every hop
  decodes and re-encodes the rest of the chain.

Together these come to 0.8–1.5 ms per step above raw Celery's 3.4–5.5 ms, which is the
1.2–1.5 ratio measured above. Getting under 1.15 would mean dropping per-step state from
Redis (the product's record of every step) or moving it off the step's critical path.
"""
