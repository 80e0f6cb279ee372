"""Workflows for the battery, following runs on the event stream, and checking every record.

Import only after the ``RUNBOOK_*`` environment points at the battery's private Redis:
runbook_celery reads its settings once.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from runbook_celery.core.errors import RunNotFound
from runbook_celery.engine.brokerlayout import broker_layout
from runbook_celery.store import RunStore
from runbook_celery.store.events import TERMINAL_EVENTS
from runbook_celery.store.globalevents import GlobalFollower

STEPS = ("a", "b", "c", "d", "e")

# a -> (b, c) -> d -> e: series-parallel, so one Celery canvas
CANVAS_SHAPE = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]}
# a -> c, a -> d, b -> d is an "N": no exact canvas, so dynamic dispatch
DYNAMIC_SHAPE = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"], "e": ["c", "d"]}
# the canvas shape with extras, still one canvas: a matrix and a (true) if: in a chord
# header, a for_each in the chain after it
FAN_SHAPE = CANVAS_SHAPE
FAN_EXTRAS = {
    "b": ["matrix: {k: [1, 2]}"],
    "c": ["if: ${{ steps.a.outputs.v == 'a' }}"],
    "d": ["for_each: ${{ fromJSON(params.items) }}"],
    "e": ["if: always()"],
}
FAN_PARAMS = ["params:", '  items: {default: \'["x", "y"]\'}']


def write_workflow(
    folder: Path,
    name: str,
    shape: dict[str, list[str]],
    body: str,
    extras: dict[str, list[str]] | None = None,
    header: list[str] | None = None,
) -> Path:
    """A 5-step workflow; ``body`` is the Bash of every step (it may use {exec_log});
    ``extras``: more lines of a step (matrix, if:, ...); ``header``: lines before steps."""
    lines = [f"name: {name}", *(header or []), "steps:"]
    for sid, needs in shape.items():
        lines.append(f"  - id: {sid}")
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
        lines += [f"    {line}" for line in (extras or {}).get(sid, [])]
        lines.append("    run: |")
        lines += [f"      {line}" for line in body.strip().splitlines()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def step_body(exec_log: Path, sleep: str) -> str:
    """Record every execution (to count repeats), work for a while, leave an output."""
    return (
        'echo "$RUNBOOK_RUN_ID $RUNBOOK_STEP_ID $RUNBOOK_STEP_ATTEMPT ${RELIABILITY_NODE:-?}'
        f' $(date +%s.%N)" >> {exec_log}\n'
        f"{sleep}\n"
        'echo "v=$RUNBOOK_STEP_ID" >> "$RUNBOOK_OUTPUT"'
    )


def executions(exec_log: Path, run_ids: Iterable[str]) -> Counter[tuple[str, str]]:
    """How many times Bash actually started for each (run, step)."""
    wanted = set(run_ids)
    counts: Counter[tuple[str, str]] = Counter()
    if exec_log.exists():
        for line in exec_log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in wanted:
                counts[(parts[0], parts[1])] += 1
    return counts


class Tracker:
    """Follows the global event stream (merged with the run streams, as ``events`` reads
    it: globalevents.py) and notes which runs have ended (no polling)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.follower = GlobalFollower(store.r, store.keys, store.newest_event_id())
        self.ended: dict[str, str] = {}
        self.events_seen = Counter[str]()
        self.running: set[tuple[str, str, str]] = set()  # (workflow, run, step) now running
        self.redis_errors = 0
        self.last_event = time.monotonic()

    def running_of(self, suffix: str) -> int:
        return sum(1 for wf, _run, _step in self.running if wf.endswith(suffix))

    def wait(
        self,
        run_ids: Iterable[str],
        deadline: float,
        tick: Callable[[], None] | None = None,
        until: Callable[[], bool] | None = None,
        block_s: float = 0.5,
        stall_s: float | None = None,
    ) -> set[str]:
        """Block until every run ended, ``until()`` or ``deadline``; returns runs still open.

        With ``stall_s``, also give up once no event at all arrived for that long: what is
        still open then is hanging, not slow.
        """
        open_ = set(run_ids) - set(self.ended)
        self.last_event = time.monotonic()
        while open_ and time.monotonic() < deadline:
            if stall_s is not None and time.monotonic() - self.last_event > stall_s:
                break
            if tick is not None:
                tick()
            if until is not None and until():
                return open_
            try:
                batch = self.follower.read(int(block_s * 1000), count=2000)
            except redis.RedisError:  # Redis restarting: the client reconnects by itself
                self.redis_errors += 1
                time.sleep(0.2)
                continue
            for _eid, event in batch:
                self.last_event = time.monotonic()
                etype = event.get("type", "")
                self.events_seen[etype] += 1
                key = (event.get("workflow", ""), event.get("run_id", ""), event.get("step"))
                if etype == "step_started":
                    self.running.add(key)  # type: ignore[arg-type]
                elif etype.startswith("step_"):
                    self.running.discard(key)  # type: ignore[arg-type]
                if event.get("type") in TERMINAL_EVENTS:
                    self.ended[event["run_id"]] = event["type"]
                    open_.discard(event["run_id"])
        # a terminal event may have been trimmed or missed across a restart: ask the record
        for run_id in list(open_):
            try:
                status = self.store.run_status(run_id)
            except redis.RedisError:
                continue
            if status in ("succeeded", "failed", "cancelled"):
                self.ended[run_id] = f"workflow_{status}"
                open_.discard(run_id)
        return open_


@dataclass
class Verdict:
    """What happened to a batch of runs, checked record by record and event by event."""

    runs: int = 0
    succeeded: int = 0
    failed: dict[str, list[str]] = field(default_factory=dict)  # run -> step reasons
    hanging: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    duplicate_successes: list[str] = field(default_factory=list)  # "run step xN"
    duplicate_endings: list[str] = field(default_factory=list)
    steps_checked: int = 0
    steps_expected: int = 0  # records of steps and instances the runs must have
    step_starts: int = 0  # step_started events: one per attempt
    repeated_starts: int = 0  # starts beyond the first, per step
    repeated_executions: int = 0  # Bash started again for a step (from the execution log)

    @property
    def clean(self) -> bool:
        return (
            self.succeeded == self.runs
            and not (self.failed or self.hanging or self.lost)
            and not (self.duplicate_successes or self.duplicate_endings)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "succeeded": self.succeeded,
            "failed": len(self.failed),
            "hanging": len(self.hanging),
            "lost": len(self.lost),
            "duplicate_step_successes": len(self.duplicate_successes),
            "duplicate_run_endings": len(self.duplicate_endings),
            "steps_checked": self.steps_checked,
            "steps_expected": self.steps_expected,
            "step_starts": self.step_starts,
            "repeated_starts": self.repeated_starts,
            "repeated_executions": self.repeated_executions,
            "clean": self.clean,
            "examples": {
                "failed": dict(list(self.failed.items())[:5]),
                "hanging": dict(list(self.hanging.items())[:5]),
                "lost": self.lost[:5],
                "duplicate_step_successes": self.duplicate_successes[:5],
                "duplicate_run_endings": self.duplicate_endings[:5],
            },
        }


def expected_steps(workflow: str) -> int:
    """Step records a run of a battery workflow has: 5, and the fan shape's 4 instances."""
    return 9 if workflow.endswith("-fan") else 5


def verify(
    store: RunStore,
    run_ids: list[str],
    *,
    exec_log: Path | None = None,
    broker: redis.Redis | None = None,
    queue: str = "",
) -> Verdict:
    """Every run must have ended succeeded, each step succeeded exactly once (by its events)."""
    v = Verdict(runs=len(run_ids))
    ran = executions(exec_log, run_ids) if exec_log else Counter()
    v.repeated_executions = sum(n - 1 for n in ran.values() if n > 1)
    for run_id in run_ids:
        try:
            rec = store.get_run(run_id)
        except RunNotFound:
            v.lost.append(run_id)
            continue
        events = [e for _, e in store.events(run_id)]
        succ = Counter(e["step"] for e in events if e["type"] == "step_succeeded")
        starts = Counter(e["step"] for e in events if e["type"] == "step_started")
        endings = [e["type"] for e in events if e["type"] in TERMINAL_EVENTS]
        if len(endings) > 1:
            v.duplicate_endings.append(f"{run_id} {endings}")
        v.steps_expected += expected_steps(rec.workflow)
        for sid in rec.steps:
            v.steps_checked += 1
            if succ[sid] > 1:
                v.duplicate_successes.append(f"{run_id} {sid} x{succ[sid]}")
            v.step_starts += starts[sid]
            v.repeated_starts += max(0, starts[sid] - 1)
        if rec.status == "succeeded" and all(
            s.status == "succeeded" and succ[sid] == 1 for sid, s in rec.steps.items()
        ):
            v.succeeded += 1
        elif rec.status in ("failed", "cancelled", "succeeded"):
            v.failed[run_id] = [
                f"{sid}: {s.status} reason={s.reason} attempts={s.attempts} successes={succ[sid]}"
                for sid, s in rec.steps.items()
                if s.status != "succeeded" or succ[sid] != 1
            ] or [f"run {rec.status}"]
        else:
            v.hanging[run_id] = diagnose(store, rec, broker, queue)
    return v


def diagnose(store: RunStore, rec: Any, broker: redis.Redis | None, queue: str) -> dict[str, Any]:
    """Where the unfinished steps of a hanging run are: running, queued, unacked or nowhere."""
    queued: set[str] = set()
    unacked: set[str] = set()
    if broker is not None:
        layout = broker_layout()  # where kombu keeps the queue's lists and unacked messages
        for key in layout.queue_keys(queue):
            queued |= {_task_id(json.loads(m)) for m in broker.lrange(key, 0, -1)}
        unacked_messages = broker.hscan_iter(layout.unacked, count=1000)
        unacked = {_task_id(json.loads(v)[0]) for _, v in unacked_messages}
    steps: dict[str, Any] = {}
    finished_unacked = []  # finished steps whose message was never acknowledged
    for sid, s in rec.steps.items():
        if s.status in ("succeeded", "failed", "skipped", "cancelled"):
            if f"{rec.id}.{sid}" in unacked:
                finished_unacked.append(sid)
            continue
        task_id = f"{rec.id}.{sid}"
        where = "queued" if task_id in queued else "unacked" if task_id in unacked else "nowhere"
        lease = store.r.ttl(store.keys.lease(rec.id, sid))
        steps[sid] = {"status": s.status, "attempts": s.attempts, "message": where, "lease": lease}
    return {
        "status": rec.status,
        "mode": rec.mode,
        "steps": steps,
        "finished_steps_still_unacked": finished_unacked,
    }


def recovery_delays(exec_log: Path, kills: dict[str, float]) -> tuple[list[float], int]:
    """Seconds from killing the worker that ran a step to the step starting again elsewhere.

    Returns the delays and the number of repeated executions not explained by a kill.
    """
    runs: dict[tuple[str, str], list[tuple[float, str]]] = {}
    if exec_log.exists():
        for line in exec_log.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                runs.setdefault((parts[0], parts[1]), []).append((float(parts[4]), parts[3]))
    delays, unexplained = [], 0
    for execs in runs.values():
        execs.sort()
        for (_t_prev, node), (t, _node) in itertools.pairwise(execs):
            if node in kills and kills[node] <= t:
                delays.append(t - kills[node])
            else:
                unexplained += 1
    return delays, unexplained


def _task_id(payload: Any) -> str:
    """The Celery task id of a kombu message (its headers carry it, protocol 2)."""
    try:
        return str(payload["headers"]["id"])
    except (KeyError, TypeError):
        return ""


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
