"""The scenarios of scripts/netlab.py and the workflows they run.

Every batch scenario submits runs from the client host, injects its fault meanwhile, then
reads each run's record and the steps' own execution log (netlab_analyse.py). Sizes come
from the profile: ``ci`` (the pytest test, a few minutes) or ``full`` (the figures in
docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netlab_analyse import read_copies, requeues, verdict
from netlab_lab import SCRIPTS, WORKERS, Lab, read_text, wait_for

STEPS = ("a", "b", "c", "d", "e")
SHAPES = {  # a canvas (chords) and a DAG no canvas expresses (dynamic dispatch)
    "canvas": {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]},
    "dynamic": {"a": [], "b": [], "c": ["a"], "d": ["a", "b"], "e": ["c", "d"]},
}
SLEEP = {  # seconds each step runs: uniform(lo, hi), drawn per run and step
    "short": dict.fromkeys(STEPS, (0.25, 1.25)),
    "medium": dict.fromkeys(STEPS, (1.0, 3.0)),
    "long-c": {**dict.fromkeys(STEPS, (0.25, 1.25)), "c": (12.0, 16.0)},
    "trigger": dict.fromkeys(STEPS, (2.0, 2.0)),
}


@dataclass(frozen=True)
class Profile:
    runs: int  # runs per batch scenario
    long_runs: int  # runs of the long partition scenarios
    long_cycles: int  # partitions per long partition scenario
    short_cycles: int
    client_cuts: tuple[float, ...]  # lengths of the client partitions, one trigger each
    scenarios: tuple[str, ...]


def write_workflow(folder: Path, shape: str) -> Path:
    """A 5-step workflow; each step logs its start, a heartbeat every quarter second
    and its end to ``$NETLAB_EXECS/exec-HOST.log``, and outputs its host and attempt."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: netlab-{shape}", "params:"]
    lines += [f'  q_{s}: "4"' for s in STEPS]
    lines.append("steps:")
    for sid, needs in SHAPES[shape].items():
        lines.append(f"  - id: {sid}")
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
        lines += [
            "    run: |",
            f"      n=${{{{ params.q_{sid} }}}}",
            '      L="$NETLAB_EXECS/exec-$NETLAB_HOST.log"',
            '      me="$RUNBOOK_RUN_ID $RUNBOOK_STEP_ID $NETLAB_HOST $RUNBOOK_STEP_ATTEMPT"',
            '      echo "$me start $(date +%s.%N) $$" >> "$L"',
            '      for _ in $(seq "$n"); do',
            "        sleep 0.25",
            '        echo "$me alive $(date +%s.%N) $$" >> "$L"',
            "      done",
            '      echo "$me end $(date +%s.%N) $$" >> "$L"',
            '      echo "host=$NETLAB_HOST" >> "$RUNBOOK_OUTPUT"',
            '      echo "attempt=$RUNBOOK_STEP_ATTEMPT" >> "$RUNBOOK_OUTPUT"',
        ]
    path = folder / f"{shape}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


FaultFn = Callable[[list[dict[str, Any]]], None]


class Scenarios:
    """Runs scenarios on one lab (Redis and workers stay up across them)."""

    def __init__(self, lab: Lab, profile: Profile, seed: int, log: Callable[[str], None]):
        self.lab, self.profile, self.seed, self.log = lab, profile, seed, log
        self.workflows = {s: write_workflow(lab.out / "workflows", s) for s in SHAPES}
        self.submitted = lab.out / "submitted.json"  # of the batch under way

    # ------------------------------------------------------------------ a batch

    def batch(
        self, name: str, *, runs: int, sleep: str, deadline_s: float, fault: FaultFn | None
    ) -> dict[str, Any]:
        lab = self.lab
        spec_path = lab.out / f"{name}.spec.json"
        spec = {
            "runs": runs,
            "shapes": list(SHAPES),
            "sleep": [[s, list(v)] for s, v in SLEEP[sleep].items()],
            "workflows": {s: str(p) for s, p in self.workflows.items()},
            "seed": self.seed + len(name),
            "deadline_s": deadline_s,
            "stall_s": max(30.0, 8 * lab.lease),
            "submitted": str(lab.out / f"{name}.submitted.json"),
            "result": str(lab.out / f"{name}.result.json"),
        }
        spec_path.write_text(json.dumps(spec, indent=1))
        argv = [sys.executable, str(SCRIPTS / "netlab_client.py"), str(spec_path)]
        proc = lab.spawn(
            f"client-{name}", "client", argv, lab.out / f"{name}.client.log", lab.env_for("client")
        )
        self.submitted = Path(spec["submitted"])  # written once every run is submitted
        faults: list[dict[str, Any]] = []
        if fault is not None:
            try:
                fault(faults)
            finally:
                lab.clear_faults()
        try:
            proc.wait(timeout=deadline_s + 120)
        except subprocess.TimeoutExpired:
            self.log(f"{name}: the client overran its deadline; stopping it")
        lab.stop(f"client-{name}", signal.SIGTERM, timeout=10)
        path = Path(spec["result"])
        if not path.exists():
            return {"error": f"no result: {read_text(lab.out / f'{name}.client.log')[-1500:]}"}
        result = json.loads(path.read_text())
        result["needs"] = {f"netlab-{s}": shape for s, shape in SHAPES.items()}
        logs = [lab.worker_log(h) for h in WORKERS]
        return verdict(lab.execs, result, faults, requeues(logs))

    def running_on(self, host: str, step: str | None = None, min_age: float = 0.3) -> list[str]:
        """Steps whose copy on ``host`` is alive now (logged within the last half second)."""
        now = time.time()
        return [
            f"{c.run[:8]}.{c.step}"
            for lst in read_copies(self.lab.execs).values()
            for c in lst
            if c.host == host
            and not c.ended
            and now - c.last < 0.5
            and now - c.start >= min_age
            and (step is None or c.step == step)
        ]

    # ------------------------------------------------------------------ scenarios

    def baseline(self) -> dict[str, Any]:
        return self.batch(
            "baseline", runs=self.profile.runs, sleep="short", deadline_s=300, fault=None
        )

    def _cuts(self, method: str, cycles: int, length: float, step: str | None) -> FaultFn:
        lab = self.lab

        def inject(faults: list[dict[str, Any]]) -> None:
            for i in range(cycles):
                if not wait_for(lambda: self.running_on("w1", step), 120, 0.1):
                    self.log(f"cut {i + 1}: nothing running on w1; no more cuts")
                    return
                victims = self.running_on("w1")
                t0 = time.time()
                lab.partition("w1", method)
                time.sleep(length)
                lab.heal("w1", method)
                t1 = time.time()
                self.log(f"w1 cut off ({method}) {t1 - t0:.1f} s; it was running {victims}")
                faults.append(
                    {"kind": method, "host": "w1", "t_start": t0, "t_end": t1, "ran": victims}
                )
                time.sleep(2 * lab.lease)

        return inject

    def partition_long(self, method: str = "drop") -> dict[str, Any]:
        fault = self._cuts(method, self.profile.long_cycles, 2.5 * self.lab.lease, "c")
        return self.batch(
            f"partition-long-{method}",
            runs=self.profile.long_runs,
            sleep="long-c",
            deadline_s=600,
            fault=fault,
        )

    def partition_short(self) -> dict[str, Any]:
        fault = self._cuts("drop", self.profile.short_cycles, 0.5 * self.lab.lease, None)
        return self.batch(
            "partition-short", runs=self.profile.runs, sleep="medium", deadline_s=400, fault=fault
        )

    def delay_loss(self) -> dict[str, Any]:
        spec = {"delay_ms": 50, "jitter_ms": 20, "loss_pct": 5}
        try:
            for i, host in enumerate(WORKERS):
                self.lab.impair(host, **spec, seed=self.seed + i)
            v = self.batch(
                "delay-loss", runs=self.profile.runs, sleep="short", deadline_s=600, fault=None
            )
        finally:
            for host in WORKERS:
                self.lab.unimpair(host)
        v["impairment"] = {**spec, "where": "both worker links, each direction"}
        return v

    def redis_fault(self, crash: bool) -> dict[str, Any]:
        lab = self.lab
        down = 5.0 if crash else 3.0

        def inject(faults: list[dict[str, Any]]) -> None:
            # every run submitted first: a submit while Redis is down fails (exit 3) by design
            wait_for(self.submitted.exists, 120, 0.1)
            wait_for(lambda: all(self.running_on(h) for h in WORKERS), 60, 0.1)
            t0 = time.time()
            if crash:  # the host goes silent first: clients get no FIN or RST
                lab.partition("redis", "blackout")
                lab.stop("redis", signal.SIGKILL, timeout=5)
            else:
                lab.stop("redis", signal.SIGTERM, timeout=20)
            time.sleep(down)
            lab.start_redis()  # on its AOF; its own readiness ping does not cross eth0
            if crash:
                lab.heal("redis", "blackout")
            t1 = time.time()
            self.log(f"Redis {'crashed' if crash else 'stopped'}, back after {t1 - t0:.1f} s")
            faults.append({"kind": "crash" if crash else "restart", "host": "redis",
                           "t_start": t0, "t_end": t1})  # fmt: skip

        name = "redis-crash" if crash else "redis-restart"
        return self.batch(
            name, runs=self.profile.runs, sleep="medium", deadline_s=500, fault=inject
        )

    def client_partition(self) -> dict[str, Any]:
        """``trigger --wait`` on the client host while the client is cut off from Redis."""
        cases = [self._trigger_cut(i, cut) for i, cut in enumerate(self.profile.client_cuts)]
        return {"runs": len(cases), "cases": cases}

    def _trigger_cut(self, i: int, cut: float) -> dict[str, Any]:
        lab = self.lab
        params = [x for s in STEPS for x in ("-p", f"q_{s}=8")]  # 2 s a step
        wf = self.workflows["canvas"]
        argv = [sys.executable, "-m", "runbook_celery", "trigger", str(wf), *params, "--wait"]
        out, err = lab.out / f"trigger-{i}.out", lab.out / f"trigger-{i}.err"
        lab.note(lab.in_ns("client", *argv), f"trigger case {i}: cut {cut} s")
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(
                lab.in_ns("client", *argv), stdout=o, stderr=e, env=lab.env_for("client"),
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_for(lambda: read_text(out).strip(), 30, 0.1)  # the run id: it is waiting
            time.sleep(1.0)
            t0 = time.time()
            lab.partition("client")
            time.sleep(cut)
            exited_during_cut = proc.poll() is not None
            lab.heal("client")
            t1 = time.time()
            try:
                code: int | None = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                code = None
            t2 = time.time()
        finally:
            if proc.poll() is None:
                with_pgid_kill(proc)
        lines = read_text(out).splitlines()
        return {
            "cut_s": round(t1 - t0, 1),
            "exit_code": code,
            "hung": code is None,
            "exited_during_cut": exited_during_cut,
            "exit_after_heal_s": round(t2 - t1, 1),
            "run": lines[0] if lines else None,
            "stderr": read_text(err).splitlines()[-4:],
        }


def with_pgid_kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


DESCRIPTIONS = {
    "baseline": "all hosts connected",
    "partition-long-drop": "w1 cut off (iptables DROP both ways, silent) for 2.5 leases "
    "while it runs a 12-16 s step",
    "partition-long-link": "as partition-long-drop, by taking w1's switch port down",
    "partition-short": "w1 cut off (DROP) for 0.5 lease while it runs steps",
    "delay-loss": "50 ms +- 20 ms delay and 5 % loss each way on both worker links",
    "client-partition": "`trigger --wait` on the client host, cut off (DROP) mid-wait",
    "redis-restart": "redis-server SIGTERM, 3 s down, restarted on its AOF",
    "redis-crash": "Redis host silent (DROP in and out), redis-server SIGKILL, back after "
    "5 s on its AOF (everysec)",
}


def run_scenario(sc: Scenarios, name: str) -> dict[str, Any]:
    table: dict[str, Callable[[], dict[str, Any]]] = {
        "baseline": sc.baseline,
        "partition-long-drop": lambda: sc.partition_long("drop"),
        "partition-long-link": lambda: sc.partition_long("link"),
        "partition-short": sc.partition_short,
        "delay-loss": sc.delay_loss,
        "client-partition": sc.client_partition,
        "redis-restart": lambda: sc.redis_fault(crash=False),
        "redis-crash": lambda: sc.redis_fault(crash=True),
    }
    return table[name]()
