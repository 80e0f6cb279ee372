"""Verdicts of scripts/netlab.py, from what the steps themselves wrote and what Redis says.

Each step of the lab's workflows appends to a file on a path every host shares (not
through the network under test): a ``start`` line, an ``alive`` line every quarter
second while it runs, and an ``end`` line. A copy of a step is alive from its start line
to its last line, so a copy killed without an end line is still placed exactly enough:

- extra execution: a step's Bash started more than once;
- concurrent copies: a copy wrote a line after another copy of the same step had started
  (both alive at once; heartbeat granularity can only hide an overlap under 0.25 s,
  never invent one);
- stale result: the recorded outputs come from an attempt older than the newest copy
  that started (a superseded attempt's result was kept);
- hung: a run not ended when the client stopped following (deadline, or no event
  anywhere for the stall time);
- unsubmitted runs recorded: runs in Redis whose ``submit()`` had failed (they could start
  after the caller was told they did not).
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Copy:
    """One execution of one step's Bash, as the step logged it."""

    run: str
    step: str
    host: str
    attempt: int
    start: float
    last: float
    ended: bool = False


def read_copies(execs: Path) -> dict[tuple[str, str], list[Copy]]:
    """(run, step) -> its copies, oldest first."""
    copies: dict[tuple[str, str, str, str], Copy] = {}
    for path in sorted(execs.glob("exec-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            p = line.split()
            if len(p) != 7:
                continue  # a line torn by a kill
            run, step, host, attempt, kind, ts, pid = p
            key = (run, step, host, pid)
            try:
                t = float(ts)
            except ValueError:
                continue
            if kind == "start":
                copies[key] = Copy(run, step, host, int(attempt), t, t)
            elif key in copies:
                copies[key].last = max(copies[key].last, t)
                copies[key].ended = copies[key].ended or kind == "end"
    by_step: dict[tuple[str, str], list[Copy]] = defaultdict(list)
    for c in copies.values():
        by_step[(c.run, c.step)].append(c)
    for lst in by_step.values():
        lst.sort(key=lambda c: c.start)
    return by_step


def overlap(copies: list[Copy]) -> float:
    """Longest time one copy was seen alive after a later copy had started (0: none)."""
    worst = 0.0
    for i, earlier in enumerate(copies):
        for later in copies[i + 1 :]:
            worst = max(worst, earlier.last - later.start)
    return worst


def _epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


# what a worker's reconciler logs when it makes a lost worker's step available again
REQUEUE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/\w+\] (?:put step (\S+) of run (\w+) back"
    r"|step (\S+) of run (\w+) .*(?:lost|no message anywhere))"
)


def requeues(worker_logs: list[Path]) -> dict[tuple[str, str], list[float]]:
    """(run, step) -> times a reconciler put the step back or published it again."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for path in worker_logs:
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if m := REQUEUE.match(line):
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
                step, run = (m.group(3), m.group(4)) if m.group(3) else (m.group(5), m.group(6))
                out[(run, step)].append(t + int(m.group(2)) / 1000)
    return out


def verdict(
    execs: Path,
    result: dict[str, Any],
    faults: list[dict[str, Any]],
    requeued: dict[tuple[str, str], list[float]] | None = None,
) -> dict[str, Any]:
    """Counts for one scenario's runs; each counted item is listed (up to 20)."""
    copies = read_copies(execs)
    runs = result.get("runs", {})
    requeued = {k: list(v) for k, v in (requeued or {}).items()}
    for run_id, info in runs.items():  # a holder's own hand-back makes its step available too
        for line in info.get("events", []):
            ts, kind, *rest = line.split()
            if kind == "step_handed_back" and rest and (t := _epoch(ts)) is not None:
                requeued.setdefault((run_id, rest[0]), []).append(t)
    out: dict[str, Any] = {
        "runs": len(result.get("submitted", [])),
        "submit_errors": [s["error"] for s in result.get("submitted", []) if s.get("error")],
        "succeeded": 0,
        "failed": {},
        "hung": {},
    }
    extra, concurrent, stale, doubled, order = [], [], [], [], []
    discarded = 0
    for run_id, info in runs.items():
        rec = info.get("record")
        if rec is None:
            out["hung"][run_id] = info.get("error", "no record")
            continue
        discarded += info.get("discarded_events", 0)
        once = info.get("succeeded_events", {})
        steps = rec["steps"]
        if rec["status"] == "succeeded" and all(
            s["status"] == "succeeded" and once.get(sid, 0) == 1 for sid, s in steps.items()
        ):
            out["succeeded"] += 1
        elif rec["status"] in TERMINAL:
            out["failed"][run_id] = {
                sid: f"{s['status']} reason={s['reason']} attempts={s['attempts']}"
                for sid, s in steps.items()
                if s["status"] != "succeeded"
            }
        else:
            out["hung"][run_id] = {
                "status": rec["status"],
                "steps": {sid: s["status"] for sid, s in steps.items()},
                "events": info.get("events", [])[-30:],
            }
        for sid, s in steps.items():
            if once.get(sid, 0) > 1:
                doubled.append(f"{run_id} {sid} x{once[sid]}")
            lst = copies.get((run_id, sid), [])
            for need in result.get("needs", {}).get(rec["workflow"], {}).get(sid, []):
                done = _epoch(steps.get(need, {}).get("finished_at"))
                if any(done is None or c.start < done - 0.01 for c in lst):
                    order.append(f"{run_id} {sid} started before {need} finished")
            if len(lst) < 2:
                continue
            entry = {
                "run": run_id,
                "step": sid,
                "copies": [
                    f"{c.host}#{c.attempt} {c.start:.2f}-{c.last:.2f}{'' if c.ended else ' killed'}"
                    for c in lst
                ],
                "recorded_attempt": (s.get("outputs") or {}).get("attempt"),
            }
            extra.append(entry)
            if (o := overlap(lst)) > 0:
                concurrent.append({**entry, "overlap_s": round(o, 2)})
            recorded = entry["recorded_attempt"]
            if recorded and int(recorded) < max(c.attempt for c in lst):
                stale.append(entry)
    out["extra_executions"] = sum(len(e["copies"]) - 1 for e in extra)
    out["steps_run_more_than_once"] = len(extra)
    out["killed_copies"] = sum(1 for lst in copies.values() for c in lst if not c.ended)
    out["concurrent_copies"] = len(concurrent)
    out["stale_results"] = len(stale)
    out["duplicate_step_succeeded"] = doubled
    out["order_violations"] = order
    out["results_discarded"] = discarded
    out["unsubmitted_runs_recorded"] = result.get("unsubmitted_runs_recorded", [])
    out["examples"] = {"extra": extra[:20], "concurrent": concurrent[:20], "stale": stale[:20]}
    out["faults"] = [recovery(f, copies, requeued) for f in faults]
    for key in ("recovery_s", "running_again_s"):
        times = [f[key] for f in out["faults"] if f.get(key) is not None]
        out[key] = {"max": max(times), "median": statistics.median(times)} if times else None
    out["poll_errors"] = result.get("poll_errors")
    return out


def recovery(
    fault: dict[str, Any],
    copies: dict[tuple[str, str], list[Copy]],
    requeued: dict[tuple[str, str], list[float]],
) -> dict[str, Any]:
    """How long the work took to go on after one fault.

    Worker cut off: for each step it was running at the cut, the time from the cut until
    the step was available to a worker again (its message put back or published again by
    a reconciler, or handed back by its holder after the heal), or running again (another
    copy started, or its own copy went on after the heal), whichever came first:
    ``recovery_s`` is the longest of those.
    ``running_again_s`` is until it was running again, which also waits for a free
    worker process. Redis down: from Redis answering again until the first step started.
    """
    f = dict(fault)
    t0, t1 = f["t_start"], f["t_end"]
    if f["host"] == "redis":
        starts = [c.start for lst in copies.values() for c in lst if c.start >= t1]
        f["recovery_s"] = round(min(starts) - t1, 2) if starts else None
        f["running_again_s"] = f["recovery_s"]
        return f
    available, running = [], []
    for (run, step), lst in copies.items():
        for c in lst:
            if c.host != f["host"] or not (c.start < t0 <= c.last + 0.5):
                continue
            later = next((o.start for o in lst if o.start > t0), None)
            again = later if later is not None else (t1 if c.last > t1 else None)
            back = next((t for t in requeued.get((run, step), []) if t > t0), None)
            if again is not None:
                running.append(again - t0)
            firsts = [t for t in (again, back) if t is not None]
            if firsts:
                available.append(min(firsts) - t0)
    f["cut_off_steps"] = len(available)
    f["recovery_s"] = round(max(available), 2) if available else None
    f["running_again_s"] = round(max(running), 2) if running else None
    return f
