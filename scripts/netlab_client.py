#!/usr/bin/env python3
"""The client host's part of scripts/netlab.py: submit a batch of runs, follow them to
their end (or until nothing has happened for a while), and write down what Redis says.

    python netlab_client.py SPEC.json

SPEC names the workflows, how many runs, how long each step sleeps (drawn per run), a
deadline and a stall time (no event anywhere for that long: what is still open hangs).
The result file holds each run's record and counts of its step events.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from runbook_celery import submit
from runbook_celery.core.settings import get_settings
from runbook_celery.store import RunStore

TERMINAL = ("succeeded", "failed", "cancelled")


def submit_all(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rng = random.Random(spec["seed"])
    submitted = []
    for i in range(spec["runs"]):
        shape = spec["shapes"][i % len(spec["shapes"])]
        # each step loops over quarter seconds, logging that it is alive (netlab.py)
        params = {f"q_{s}": str(round(rng.uniform(lo, hi) * 4)) for s, (lo, hi) in spec["sleep"]}
        t = time.time()
        try:
            run = submit(spec["workflows"][shape], params)
            submitted.append({"run": run.id, "shape": shape, "t_submit": t})
        except Exception as exc:  # reported as a submit error, not a crash of the driver
            submitted.append({"run": None, "shape": shape, "t_submit": t, "error": str(exc)})
    return submitted


def follow(store: RunStore, ids: list[str], deadline_s: float, stall_s: float) -> int:
    """Poll statuses until every run ended, the deadline passed or nothing moved for
    ``stall_s``; returns how many polls Redis did not answer."""
    status: dict[str, str | None] = {}
    errors, last_len, last_progress = 0, -1, time.monotonic()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        open_ = [r for r in ids if status.get(r) not in TERMINAL]
        if not open_:
            break
        try:
            pipe = store.r.pipeline(transaction=False)
            for r in open_:
                pipe.hget(store.keys.run(r), "status")
            for r in open_:  # a step's own events are in its run's stream only
                pipe.xlen(store.keys.run_events(r))
            replies = pipe.execute()
            values, xlen = replies[: len(open_)], sum(replies[len(open_) :])
        except redis.RedisError:
            errors += 1
            time.sleep(0.5)
            continue
        if xlen != last_len:
            last_len, last_progress = xlen, time.monotonic()
        for r, v in zip(open_, values, strict=True):
            status[r] = v.decode() if v else None
        if time.monotonic() - last_progress > stall_s:
            break  # nothing happened anywhere for stall_s: what is open now hangs
        time.sleep(0.3)
    return errors


def describe(store: RunStore, run_id: str) -> dict[str, Any]:
    for _ in range(20):
        try:
            record = store.get_run(run_id).to_dict()
            events = [e for _, e in store.events(run_id)]
            break
        except Exception as exc:  # Redis still coming back: try again, then report
            error = f"{type(exc).__name__}: {exc}"
            time.sleep(1)
    else:
        return {"error": error}
    for step in record["steps"].values():
        step["stderr_tail"] = step.get("stderr_tail", [])[-3:]
    count = Counter((e["type"], e.get("step")) for e in events)
    return {
        "record": record,
        "succeeded_events": {s: n for (t, s), n in count.items() if t == "step_succeeded"},
        "discarded_events": sum(n for (t, _), n in count.items() if t == "step_result_discarded"),
        "events": [f"{e.get('ts')} {e['type']} {e.get('step', '')} {e.get('attempt', '')}"
                   for e in events],
    }  # fmt: skip


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    settings = get_settings()
    # the checker's own client, with short timeouts, so checking never hangs on a dead link
    track = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
    store = RunStore(track, settings.prefix, settings.retention)
    before = set(store.r.zrange(store.keys.runs_index, 0, -1))
    submitted = submit_all(spec)
    Path(spec["submitted"]).write_text(json.dumps(submitted))
    ids = [s["run"] for s in submitted if s["run"]]
    errors = follow(store, ids, spec["deadline_s"], spec["stall_s"])
    runs = {r: describe(store, r) for r in ids}
    # runs that exist though their submit failed (they must not: the caller was told so)
    created = {x.decode() for x in set(store.r.zrange(store.keys.runs_index, 0, -1)) - before}
    result = {
        "submitted": submitted,
        "runs": runs,
        "poll_errors": errors,
        "unsubmitted_runs_recorded": sorted(created - set(ids)),
    }
    Path(spec["result"]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
