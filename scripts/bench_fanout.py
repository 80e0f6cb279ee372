#!/usr/bin/env python3
"""Measure a large ``for_each`` fan-out: time to fan out, Redis bytes, time to cancel.

    python scripts/bench_fanout.py --items 10000
    python scripts/bench_fanout.py --items 10000 --max-parallel 50

Runs on a private redis-server (no persistence) on a free loopback port and one worker
started here; both are stopped at the end. Prints one JSON object:

* ``fan_out_s``: the fanned-out step's task, from the worker receiving it to its end, when
  every instance is recorded and the first messages are sent (worker log);
* ``redis_bytes``: Redis ``used_memory`` once fanned out, minus before the trigger;
* ``cancel_s``: from ``Run.cancel()`` to the run's final event;
* ``instances_started``: instances that had started when the run ended.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reliability_infra import RedisServer, Worker

WORKFLOW = """\
name: fanbench
steps:
  - id: list
    run: |
      python3 -c "import json; print('items=' + json.dumps(list(range({items}))))" \\
        >> "$RUNBOOK_OUTPUT"
  - id: each
    needs: [list]
    for_each: ${{{{ steps.list.outputs.items }}}}
{max_parallel}    run: sleep 600
"""


# the fanned-out step's task in the worker's log: received, then ended: "succeeded in <s>s"
# (it returned), or "ignored" (it handed its instances on and ended without a result of
# its own, as a canvas for_each does)
_LINE = r"^\[(?P<at>[0-9-]+ [0-9:]+,[0-9]+): [^\]]*\] Task \S+\[{run}\.each\] (?P<how>{how})"


def fanned_out(run_id: str, worker: Worker, deadline: float) -> float:
    """Seconds the fanned-out step's task took: Celery's own figure when it says
    "succeeded in", else from the worker receiving its message to the task's end."""
    ended = re.compile(_LINE.format(run=re.escape(run_id), how=r"succeeded in .*|ignored"), re.M)
    while not (m := ended.search(worker.logs())):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no fan-out in time: {worker.log_tail()}")
        time.sleep(0.2)
    took = re.match(r"succeeded in ([0-9.]+)s", m["how"])
    if took:
        return float(took.group(1))
    received = re.compile(_LINE.format(run=re.escape(run_id), how="received"), re.M)
    start = received.search(worker.logs())
    if start is None:
        raise RuntimeError(f"no 'received' line for the fanned-out step: {worker.log_tail()}")
    return (_log_time(m["at"]) - _log_time(start["at"])).total_seconds()


def _log_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")  # both on the worker's clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--max-parallel", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    server = RedisServer(work / "redis")
    queue = f"fanbench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "RUNBOOK_REDIS_URL": server.url(),
        "RUNBOOK_BROKER_URL": server.url(),
        "RUNBOOK_QUEUE": queue,
        "RUNBOOK_PREFIX": queue,
        "RUNBOOK_KILL_GRACE": "1",
        "RUNBOOK_MAX_INSTANCES": str(max(args.items, 10_000)),
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("RUNBOOK_")})
    from runbook_celery.client.api import submit

    worker = Worker("fan", env, work, concurrency=args.concurrency)
    try:
        worker.start()
        admin = server.admin()
        admin.config_set("appendonly", "no")
        before = int(admin.info("memory")["used_memory"])
        path = work / "fanbench.yaml"
        mp = f"    max_parallel: {args.max_parallel}\n" if args.max_parallel else ""
        path.write_text(WORKFLOW.format(items=args.items, max_parallel=mp))
        run = submit(path)
        fan_out_s = fanned_out(run.id, worker, deadline=time.monotonic() + 600)
        used = int(admin.info("memory")["used_memory"])
        print(f"fanned out in {fan_out_s} s, {used - before} bytes", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        run.cancel()
        record = run.wait(timeout=1200)
        cancel_s = time.monotonic() - t0
        started = sum(1 for sid, s in record.steps.items() if s.started_at and "[" in sid)
        print(
            json.dumps(
                {
                    "items": args.items,
                    "max_parallel": args.max_parallel or None,
                    "fan_out_s": round(fan_out_s, 2),
                    "redis_bytes": used - before,
                    "cancel_s": round(cancel_s, 2),
                    "final_status": record.status,
                    "instances_started": started,
                    "worker_rss_mb": round(worker.rss_mb(), 1),
                }
            )
        )
    finally:
        worker.stop(grace=5)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
