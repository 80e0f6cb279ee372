"""The store's invariants under random interleavings (hypothesis ``RuleBasedStateMachine``).

What is real: the store (every Lua script, on real Redis, under this session's key
prefix; the regression tests at the end run on the store's in-memory double as well), the
step task's decision logic (``delivery.StepExecution``: claim, park, record, retry,
hand-back, duplicate replay), recovery (``recovery.recover_once``), the gates
(pause, resume, approve, reject, decisions), cancel, concurrency-group admission and the
loader/compile path that builds each run's snapshot.

What stands in: the broker is a list of messages in this process (every published step
message lands there; a crashed delivery's message goes back, or is lost, as kombu's Redis
transport can lose one); the reconciler looks in it as it looks in a Redis broker (queued:
the list; unacknowledged: the messages of deliveries in flight); Bash is a
pause point whose outcome is drawn (exit 0, exit 1, or the worker shutting down); the
lease keeper is renewed by a rule. Each delivery runs in its own thread and stops before
every store call, so the machine decides what happens between any two of its
transitions: another delivery, a duplicate, a crash (the delivery is abandoned after the
store calls it made), a lease period passing, the reconciler, an operator.

Time: leases are an hour long here, so Redis never expires one on its own; "a lease
period passes" deletes the lease of every holder that does not renew, fences those
holders (their Bash is dead by then: lease.py's hard fence comes before the lease ends),
and the reconciler sees every watch as run out (its clock is put one lease ahead).

Profiles: ``ci`` (default, bounded to well under a minute) and ``long``
(``RUNBOOK_STATEFUL_PROFILE=long``; ``RUNBOOK_STATEFUL_EXAMPLES`` examples, default 5000).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from celery.canvas import Signature
from celery.exceptions import Ignore, Retry
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from invariants import TERMINAL, LiveCopy, Observed, check_all

from runbook_celery.client import api, control
from runbook_celery.client.control import RunControl
from runbook_celery.core.errors import InvalidOperation
from runbook_celery.core.settings import get_settings
from runbook_celery.definition.loader import load_workflow_text
from runbook_celery.engine import dispatch, recovery, workerstore
from runbook_celery.engine.app import STEP_TASK
from runbook_celery.engine.runner import BashResult
from runbook_celery.engine.step import bash, context, delivery, handon, policy
from runbook_celery.engine.taskevents import StepFailed
from runbook_celery.plan.compile import build_snapshot
from runbook_celery.store import (
    RunStore,
    gates,  # where Gates reads its settings
    redisconn,
)
from runbook_celery.store.events import FailureReason
from runbook_celery.store.gates import Gates

pytestmark = pytest.mark.timeout(3600)

LEASE = 3600
MAX_RUNS = 3

settings.register_profile(
    "ci",
    max_examples=30,
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("RUNBOOK_STATEFUL_EXAMPLES", "5000")),
    stateful_step_count=80,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
PROGRESS = os.environ.get("RUNBOOK_STATEFUL_PROGRESS")  # a file: the tally, as it goes
PROFILE = settings.get_profile(os.environ.get("RUNBOOK_STATEFUL_PROFILE", "ci"))
if os.environ.get("RUNBOOK_STATEFUL_SHRINK") == "0":  # report the first failure as found
    PROFILE = settings(PROFILE, phases=[Phase.explicit, Phase.reuse, Phase.generate])


def currently_in_test_context() -> bool:
    """Whether hypothesis is running an example (its public helper is newer than 6.0)."""
    from hypothesis import control

    if hasattr(control, "currently_in_test_context"):
        return bool(control.currently_in_test_context())
    return control._current_build_context.value is not None


class Crash(BaseException):
    """The delivery's worker died here (BaseException: no handler in the task sees it)."""


_current = threading.local()
TALLY: Counter[str] = Counter()


class Delivery:
    """One delivery of one step message, in its own thread, stopping before each store call."""

    def __init__(self, h: Harness, run_id: str, step_id: str, outcome: str) -> None:
        self.h = h
        self.run_id = run_id
        self.step_id = step_id
        self.outcome = outcome  # what its Bash does: ok | fail | shutdown
        self.point: str | None = "begin"
        self.crash = False
        self.done = False
        self.ending: str | None = None
        self.error: BaseException | None = None
        self.execution: delivery.StepExecution | None = None
        self.keeper: FakeKeeper | None = None
        self._turn = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        _Worker.take(self)
        self._wait()

    def _wait(self) -> None:
        if not self._back.acquire(timeout=120):
            raise AssertionError(f"delivery of {self.step_id} stuck at {self.point}")

    # -- in the delivery's thread
    def pause(self, point: str) -> None:
        self.point = point
        self._back.release()
        self._turn.acquire()
        if self.crash:
            raise Crash()

    def _body(self) -> None:
        _current.delivery = self
        _current.noted = None
        try:
            self.pause("begin")
            self.ending = self._deliver()
        except Crash:
            self.ending = "crash"
        except BaseException as exc:  # a bug: reported by the machine
            self.error = exc
            self.ending = "error"
        finally:
            self.point = None
            self.done = True
            self._back.release()

    def _deliver(self) -> str:
        h = self.h
        store = ObservingStore(h, self)
        ctx = context.cache.get(h.store, self.run_id)
        task = StandInTask(h, self.run_id, self.step_id)
        self.execution = delivery.StepExecution(
            task, h.settings, store, ctx, self.run_id, self.step_id
        )  # type: ignore[arg-type]
        try:
            self.execution.guarded(self.execution.execute)
        except Retry:
            return "retry"  # the task sent its message again (StandInTask.retry)
        except Ignore:
            return "ignored"
        except StepFailed:
            pass  # a failed step: Celery stores the failure and hands on, as on success
        # task_postrun / the result backend: the step hands on (workerhooks._handed_on)
        self.pause("hand_on")
        member = f"{self.run_id}|{self.step_id}"
        noted = getattr(_current, "noted", None)
        succ, ended = (noted[1], noted[2]) if noted and noted[0] == member else ([], [])
        h.store.hand_on(self.run_id, self.step_id, succ, LEASE, ended=ended)
        return "handed_on"

    # -- in the machine's thread
    def advance(self, crash: bool = False) -> None:
        self.crash = crash
        self._turn.release()
        self._wait()

    @property
    def live(self) -> LiveCopy | None:
        if self.point != "bash" or self.keeper is None or self.keeper.lost is not None:
            return None
        return LiveCopy(self.run_id, self.step_id, self.keeper.token, self.keeper.attempt)


class _Worker:
    """A worker thread, reused from delivery to delivery (threads are not cheap)."""

    idle: list[_Worker] = []

    def __init__(self) -> None:
        self.job: Delivery | None = None
        self.go = threading.Semaphore(0)
        threading.Thread(target=self._loop, daemon=True).start()

    @classmethod
    def take(cls, delivery: Delivery) -> None:
        worker = cls.idle.pop() if cls.idle else cls()
        worker.job = delivery
        worker.go.release()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            job, self.job = self.job, None
            assert job is not None
            job._body()
            _Worker.idle.append(self)


class StandInTask:
    """What StepExecution uses of a bound Celery task; retry() sends the message again."""

    name = STEP_TASK

    def __init__(self, h: Harness, run_id: str, step_id: str) -> None:
        self.h = h
        self.args = (run_id, step_id)

    def signature_from_request(self) -> dict[str, Any]:
        return {"task": self.name, "args": list(self.args), "kwargs": {}, "options": {}}

    def retry(self, **_: Any) -> Retry:
        self.h.broker.append(self.args)
        return Retry()


class FakeKeeper:
    """The lease keeper, renewed when the machine says a lease period passes."""

    def __init__(self, store: Any, run_id: str, step_id: str, **kw: Any) -> None:
        self.store = _current.delivery.h.store
        self.run_id, self.step_id = run_id, step_id
        self.token, self.attempt = kw["token"], kw["attempt"]
        self.lost: str | None = None
        _current.delivery.keeper = self

    def start(self) -> FakeKeeper:
        return self

    def stop(self) -> None:
        pass

    def attach(self, pgid: int) -> None:
        pass

    def detach(self) -> None:
        pass

    def push_deadline(self) -> None:
        pass

    def expired(self) -> bool:
        return self.lost is not None

    def renew(self) -> None:
        holder, _cancel = self.store.refresh_lease(
            self.run_id, self.step_id, self.token, self.attempt, LEASE
        )
        if not holder:
            self.lost = "superseded"


def _run_bash(self: delivery.StepExecution, outputs: Any, override: Any) -> BashResult:
    """Bash: a pause point (the step runs), then the drawn outcome, as the runner reports
    it (killed when the lease was lost, stopped when the run was cancelled)."""
    d: Delivery = _current.delivery
    d.pause("bash")
    verdict = self._tick(_NoLogs())()  # the step task's own tick, as the runner calls it
    if verdict is True and d.keeper is not None and d.keeper.lost is not None:
        return BashResult(exit_code=-9, reason=FailureReason.EXIT_CODE)
    if verdict is True:
        return BashResult(exit_code=-15, reason=FailureReason.CANCELLED)
    if d.outcome == "shutdown":
        return BashResult(exit_code=-15, reason=bash.HANDBACK)
    if d.outcome == "fail":
        return BashResult(exit_code=1, stderr_tail=["boom"])
    return BashResult(exit_code=0, outputs={"out": d.step_id})


class _NoLogs:
    """The log sink the tick flushes (this Bash writes no lines)."""

    def flush(self) -> None:
        pass


class ObservingStore:
    """The real store, recording accepted transitions; a delivery's also pauses first."""

    def __init__(self, h: Harness, delivery: Delivery | None = None) -> None:
        self._h = h
        self._d = delivery

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._h.store, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._d is not None:
                self._d.pause(name)
            result = attr(*args, **kwargs)
            self._h.note(name, args, kwargs, result)
            return result

        return call


class ObservingGates(Gates):
    """Gates whose await_decision (called by the step task) pauses and is recorded."""

    def await_decision(self, run_id: str, step_id: str, **kw: Any) -> Any:
        d = getattr(_current, "delivery", None)
        if d is not None:
            d.pause("await_decision")
        outcome = super().await_decision(run_id, step_id, **kw)
        obs = self.store._h.observed if isinstance(self.store, ObservingStore) else None
        if obs is not None:
            obs.saw(run_id, step_id, "awaiting_decision" if outcome.done else "discarded")
        return outcome


class Harness:
    """The broker, the deliveries and the observations of one example."""

    def __init__(self) -> None:
        base = get_settings()
        self.settings = dataclasses.replace(base, lease_seconds=LEASE, max_attempts=3)
        self.client = _CLIENT[0]
        self.store = RunStore(self.client, base.prefix, base.retention)
        self.broker: list[tuple[str, str]] = []
        self.deliveries: list[Delivery] = []
        self.observed = Observed()
        self.runs: list[str] = []
        self.group = f"g-{uuid.uuid4().hex[:8]}"
        self.groups: dict[str, int] = {}
        self.errors: list[str] = []

    def note(self, name: str, args: Any, kwargs: Any, result: Any) -> None:
        """Record what a store call did (the transitions the event stream must match)."""
        obs = self.observed
        if name not in ("start_step", "finish_step", "retry_step", "handback_step"):
            return
        run_id, step_id = args[0], args[1]
        if name == "start_step":
            if result.action == "start":
                obs.saw(run_id, step_id, "started")
                if (run_id, step_id) in obs.ended:
                    obs.restarted.append((run_id, step_id, result.attempt))
            elif result.action == "parked":
                obs.saw(run_id, step_id, "parked")
                TALLY[f"parked by {result.status}"] += 1
        elif name == "finish_step":
            if result.superseded:
                obs.saw(run_id, step_id, "discarded")
        elif result.superseded:
            obs.saw(run_id, step_id, "discarded")
        elif result.done:
            obs.saw(run_id, step_id, "retrying" if name == "retry_step" else "handed_back")

    def publish(self, sig: Signature) -> None:
        """Signature.apply_async: a step message lands in the broker list."""
        if sig.task == STEP_TASK:
            run_id, step_id = sig.args
            # the same message twice in the queue adds nothing deliver_twice does not
            # (and the reconciler here, blind to the queue, republishes what is queued)
            if (run_id, step_id) not in self.broker:
                self.broker.append((run_id, step_id))

    def unacked(self, task_ids: set[str]) -> dict[str, recovery.Unacked]:
        """recovery._unacked: a delivery in flight holds its message unacknowledged."""
        out: dict[str, recovery.Unacked] = {}
        for d in self.deliveries:
            task_id = f"{d.run_id}.{d.step_id}"
            if not d.done and task_id in task_ids:
                out[task_id] = (f"{d.run_id}|{d.step_id}", {}, "queue")
        return out

    def restore(self, tag: str, *_: Any) -> bool:
        """recovery._restore: the unacknowledged message goes back on its queue."""
        run_id, step_id = tag.split("|")
        if (run_id, step_id) not in self.broker:
            self.broker.append((run_id, step_id))
        return True

    def queued(self, task_ids: Any) -> set[str]:
        """recovery.queued: which of ``task_ids`` wait in the broker."""
        return {f"{r}.{s}" for r, s in self.broker} & set(task_ids)

    def live(self) -> list[LiveCopy]:
        return [c for d in self.deliveries if (c := d.live) is not None]

    def check(self) -> None:
        for d in self.deliveries:
            if d.error is not None:
                raise AssertionError(f"delivery of {d.step_id} raised {d.error!r}") from d.error
        for run_id in self.runs:
            for sid, hh in self.store.step_hashes(run_id, self.store.step_ids(run_id)).items():
                assert hh.get("reason") != "internal_error", f"{run_id}/{sid}: {hh}"
        check_all(self.store, self.runs, self.observed, self.live(), self.groups)

    def cleanup(self) -> None:
        for d in self.deliveries:
            if not d.done:
                d.advance(crash=True)
        k = self.store.keys
        for run_id in self.runs:
            ids = self.store.step_ids(run_id)
            self.store.delete_run(run_id)
            self.client.delete(f"{k.run(run_id)}:active", f"{k.run(run_id)}:parked")
            self.client.delete(*(f"{k.prefix}:recover:{run_id}|{s}" for s in ids))
            self.client.zrem(k.leases, *(f"{run_id}|{s}" for s in ids))
            context.cache.drop(run_id)
        for group in self.groups:
            self.client.delete(k.cgroup(group), k.cgroup_queue(group))


def _workflow_text(draw: Callable[[Any], Any], group: str) -> str:
    """A small random workflow (YAML): steps with needs, retries, approvals, pause on
    failure, conditions; sometimes max_active_steps and a concurrency group."""
    n = draw(st.integers(1, 4))
    lines = ["name: prop", "steps:"]
    for i in range(n):
        lines += [f"  - id: s{i}", "    run: 'true'"]
        needs = draw(st.sets(st.integers(0, i - 1), max_size=2)) if i else set()
        if needs:
            lines.append(f"    needs: [{', '.join(f's{j}' for j in sorted(needs))}]")
        cond = draw(st.sampled_from([None, None, "success()", "always()", "failure()"]))
        if i == n - 1 and cond is None:
            cond = "success()"  # the last step always has a condition
        if cond:
            lines.append(f"    if: {cond}")
        if draw(st.integers(0, 4)) == 0:
            lines.append("    approval: {prompt: ok?}")
        if draw(st.integers(0, 3)) == 0:
            lines.append("    retries: {limit: 1}")
        if draw(st.integers(0, 5)) == 0:
            lines.append("    on_failure: pause")
    limit = draw(st.sampled_from([None, None, 1, 2]))
    if limit:
        lines.append(f"max_active_steps: {limit}")
    if draw(st.integers(0, 2)) == 0:
        conflict = draw(st.sampled_from(["queue", "skip", "cancel_running"]))
        lines.append(f"concurrency: {{group: {group}, limit: 1, on_conflict: {conflict}}}")
    return "\n".join(lines) + "\n"


class StoreMachine(RuleBasedStateMachine):
    """Random interleavings of deliveries, faults, the reconciler and operators.

    The broker is Redis, which loses the message of a worker that dies (kombu's Redis
    transport cannot always put it back); ``AmqpStoreMachine`` is the same on AMQP."""

    # a dead worker's message may be lost; the reconciler looks into the (Redis) broker
    LOSES_MESSAGES = True

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        h = self.h
        self._patches = [
            mock.patch.object(Signature, "apply_async", lambda sig, *a, **k: h.publish(sig)),
            mock.patch.object(delivery, "LeaseKeeper", FakeKeeper),
            mock.patch.object(workerstore, "lease_store", lambda: h.store),
            mock.patch.object(workerstore, "worker_store", lambda: (h.settings, ObservingStore(h))),
            mock.patch.object(handon, "note_successors", _note_successors),
            mock.patch.object(policy, "Gates", ObservingGates),
            mock.patch.object(delivery.StepExecution, "_run", _run_bash),
            mock.patch.object(redisconn, "store_for", lambda _s: ObservingStore(h)),
            mock.patch.object(control, "check_writable", lambda *_a: None),
            mock.patch.object(recovery, "get_settings", lambda: h.settings),
            # the broker is Redis (h.settings.broker_url), and loses messages as it can
            mock.patch.object(recovery, "_unacked", lambda _b, ids, _l=None: h.unacked(ids)),
            mock.patch.object(recovery, "_restore", lambda _b, *a: h.restore(*a)),
            mock.patch.object(recovery, "queued", lambda _b, _q, ids, _l=None: h.queued(ids)),
            mock.patch.object(gates, "get_settings", lambda: h.settings),
            mock.patch.object(dispatch, "get_settings", lambda: h.settings),
        ]
        for p in self._patches:
            p.start()

    def teardown(self) -> None:
        try:
            if currently_in_test_context():
                self.settle()
                self._tally()
                if PROGRESS and TALLY["examples"] % 25 == 0:
                    with open(PROGRESS, "w") as f:
                        f.write(f"{dict(sorted(TALLY.items()))}\n")
            self.h.cleanup()
        finally:
            for p in reversed(self._patches):
                p.stop()

    def settle(self, rounds: int = 30) -> None:
        """Once the faults stop, every run ends: deliveries finish, messages are
        delivered, operators resume, approve and retry, leases of dead holders lapse and
        the reconciler puts back what was lost. A run still open after that is hung."""
        h = self.h
        for _ in range(rounds):
            if all(h.store.r.hget(h.store.keys.run(r), "finished_at") for r in h.runs):
                return
            for d in self._running():
                while not d.done:
                    d.advance()
            for _ in range(len(h.broker)):  # what is queued now ("busy" comes back later)
                run_id, step_id = h.broker.pop(0)
                d = Delivery(h, run_id, step_id, "ok")
                h.deliveries.append(d)
                while not d.done:
                    d.advance()
                self.invariants_hold()
            for i in range(len(h.runs)):
                self.resume(i)
            for _ in self._waiting("awaiting_approval"):
                self.approve_or_reject(0, True)
            for _ in self._waiting("awaiting_decision"):
                self.decide(0, "retry")
            self.lease_period_passes(set())
            self.reconcile()
            self.invariants_hold()
        hung = {r: h.store.get_run(r) for r in h.runs}
        hung = {
            r: (rec.status, {s: step.status for s, step in rec.steps.items()})
            for r, rec in hung.items()
            if not rec.finished_at
        }
        k = h.store.keys
        detail = {
            f"{r}|{sid}": {
                **hh,
                "lease": h.client.get(k.lease(r, sid)),
                "watch": h.client.zscore(k.leases, f"{r}|{sid}"),
            }
            for r in hung
            for sid, hh in h.store.step_hashes(r, h.store.step_ids(r)).items()
            if hh.get("status") not in TERMINAL
        }
        raise AssertionError(
            f"runs never ended once the faults stopped: {hung}; open steps {detail}; "
            f"queued {h.broker}"
        )

    def _tally(self) -> None:
        """What the example reached, summed over examples in TALLY (printed at the end)."""
        h = self.h
        TALLY["examples"] += 1
        for r in h.runs:
            TALLY[f"run {h.store.run_status(r)}"] += 1
        for (_r, _s, kind), n in h.observed.counts.items():
            TALLY[f"transition {kind}"] += n
        for d in h.deliveries:
            TALLY[f"delivery {d.ending}"] += 1

    # ------------------------------------------------------------------ runs

    @precondition(lambda self: len(self.h.runs) < MAX_RUNS)
    @rule(data=st.data())
    def trigger(self, data: st.DataObject) -> None:
        self.submit(_workflow_text(data.draw, self.h.group))

    def submit(self, text: str) -> str:
        """Trigger a run of ``text`` (YAML) through the loader, compiler and submit."""
        h = self.h
        snapshot = build_snapshot(load_workflow_text(text), {})
        # the broker here is a list, not Celery: every run goes by dynamic dispatch
        snapshot["mode"], snapshot["mode_reason"] = "dynamic", "the stateful test's broker"
        if snapshot.get("concurrency"):
            h.groups[h.group] = 1
        run = api.submit_snapshot(snapshot, settings=h.settings)
        h.runs.append(run.id)
        if h.store.run_status(run.id) == "skipped":
            h.observed.skipped_runs.add(run.id)
        return run.id

    # ------------------------------------------------------------------ deliveries

    @precondition(lambda self: self.h.broker)
    @rule(
        i=st.integers(0, 50),
        outcome=st.sampled_from(["ok", "ok", "fail", "fail", "shutdown"]),
        calls=st.integers(0, 12),
    )
    def deliver(self, i: int, outcome: str, calls: int = 0) -> None:
        """A worker takes a message from the broker and makes its first ``calls`` calls."""
        run_id, step_id = self.h.broker.pop(i % len(self.h.broker))
        d = Delivery(self.h, run_id, step_id, outcome)
        self.h.deliveries.append(d)
        for _ in range(calls):
            if d.done:
                break
            d.advance()

    @precondition(lambda self: self.h.broker)
    @rule(i=st.integers(0, 50), outcome=st.sampled_from(["ok", "fail"]))
    def deliver_twice(self, i: int, outcome: str) -> None:
        """The broker delivers a message that stays queued (a duplicate delivery)."""
        run_id, step_id = self.h.broker[i % len(self.h.broker)]
        self.h.deliveries.append(Delivery(self.h, run_id, step_id, outcome))

    def _running(self) -> list[Delivery]:
        return [d for d in self.h.deliveries if not d.done]

    @precondition(lambda self: self._running())
    @rule(i=st.integers(0, 50), calls=st.integers(1, 8))
    def advance(self, i: int, calls: int) -> None:
        """A delivery makes its next ``calls`` store calls (Bash is one), or ends."""
        running = self._running()
        d = running[i % len(running)]
        for _ in range(calls):
            if d.done:
                break
            d.advance()

    @precondition(lambda self: self._running())
    @rule(i=st.integers(0, 50), requeue=st.booleans())
    def crash(self, i: int, requeue: bool) -> None:
        """A delivery's worker dies before its next store call; its message goes back to
        the queue (unacknowledged) or is lost with it."""
        running = self._running()
        d = running[i % len(running)]
        d.advance(crash=True)
        if requeue or not self.LOSES_MESSAGES:
            self.h.broker.append((d.run_id, d.step_id))

    @precondition(lambda self: self.h.runs)
    @rule(renew=st.sets(st.integers(0, 20)))
    def lease_period_passes(self, renew: set[int]) -> None:
        """A lease period passes: holders in ``renew`` renew (compare-and-set); every other
        lease lapses, and a holder that did not renew was fenced (its Bash is dead)."""
        h = self.h
        keepers = [d.keeper for d in self._running() if d.keeper and d.keeper.lost is None]
        kept = set()
        for j, keeper in enumerate(keepers):
            if j in renew:
                keeper.renew()
                if keeper.lost is None:
                    kept.add(keeper.token)
            else:
                keeper.lost = "unreachable"
        for run_id in h.runs:
            for sid in h.store.step_ids(run_id):
                key = h.store.keys.lease(run_id, sid)
                token = h.client.get(key)
                if token is not None and token.decode() not in kept:
                    h.client.delete(key)

    def _holding(self) -> list[Delivery]:
        return [d for d in self._running() if d.keeper and d.keeper.lost is None]

    @precondition(lambda self: self._holding())
    @rule(i=st.integers(0, 20), calls=st.integers(0, 12), outcome=st.sampled_from(["ok", "fail"]))
    def take_over(self, i: int, calls: int, outcome: str) -> None:
        """A holder stalls (GC pause, partition) past its lease: it is fenced, its lease
        lapses, and a redelivery of its step claims it and makes ``calls`` calls."""
        holding = self._holding()
        d = holding[i % len(holding)]
        assert d.keeper is not None
        d.keeper.lost = "unreachable"
        self.h.client.delete(self.h.store.keys.lease(d.run_id, d.step_id))
        other = Delivery(self.h, d.run_id, d.step_id, outcome)
        self.h.deliveries.append(other)
        for _ in range(calls):
            if other.done:
                break
            other.advance()

    @precondition(lambda self: self.h.runs)
    @rule()
    def reconcile(self) -> None:
        """The reconciler's pass, with every watch run out (its clock a lease ahead)."""
        h = self.h
        for run_id in h.runs:  # the reconciler's locks of earlier passes have run out
            locks = [
                f"{h.store.keys.prefix}:recover:{run_id}|{s}" for s in h.store.step_ids(run_id)
            ]
            h.client.delete(*locks)
        ahead = ObservingStore(h)
        real = h.store.server_time
        ahead.server_time = lambda: real() + LEASE  # type: ignore[method-assign]
        mine = set(h.runs)
        expired = h.store.expired_leases(before=real() + LEASE)
        # only this example's entries (the session's other tests have their own runs)
        ahead.expired_leases = lambda **_: [e for e in expired if e[0] in mine]  # type: ignore[method-assign]
        # the workers' reconciler (workersteps.Reconciler) with a Redis broker, whose
        # messages it looks for: the broker list here (the patches of __init__); on AMQP
        # it has no broker to look in
        broker = _BROKER if self.LOSES_MESSAGES else None
        recovery.recover_once(ahead, broker, 60)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ operators

    def _pick_run(self, i: int) -> str:
        return self.h.runs[i % len(self.h.runs)]

    @precondition(lambda self: self.h.runs)
    @rule(i=st.integers(0, 5), now=st.integers(0, 2))
    def cancel(self, i: int, now: int = 0) -> None:
        """Cancel a run (one time in three: a run cancelled early exercises little)."""
        if now == 0:
            api.Run(self._pick_run(i), self.h.settings).cancel(by="prop")

    @precondition(lambda self: self.h.runs)
    @rule(i=st.integers(0, 5), now=st.integers(0, 1))
    def pause(self, i: int, now: int = 0) -> None:
        if now != 0:
            return
        with _allowed():
            RunControl(self._pick_run(i), self.h.settings).pause(by="prop")

    @precondition(lambda self: self.h.runs)
    @rule(i=st.integers(0, 5))
    def resume(self, i: int) -> None:
        with _allowed():
            RunControl(self._pick_run(i), self.h.settings).resume(by="prop")

    def _waiting(self, status: str) -> list[tuple[str, str]]:
        out = []
        for run_id in self.h.runs:
            for sid, hh in self.h.store.step_hashes(run_id, self.h.store.step_ids(run_id)).items():
                if hh.get("status") == status:
                    out.append((run_id, sid))
        return out

    @precondition(lambda self: self.h.runs)
    @rule(i=st.integers(0, 20), approve=st.booleans())
    def approve_or_reject(self, i: int, approve: bool) -> None:
        waiting = self._waiting("awaiting_approval")
        if not waiting:
            return
        run_id, sid = waiting[i % len(waiting)]
        ctl = RunControl(run_id, self.h.settings)
        with _allowed():
            ctl.approve(sid, by="prop") if approve else ctl.reject(sid, by="prop")

    @precondition(lambda self: self.h.runs)
    @rule(i=st.integers(0, 20), choice=st.sampled_from(["retry", "skip", "abort"]))
    def decide(self, i: int, choice: str) -> None:
        waiting = self._waiting("awaiting_decision")
        if not waiting:
            return
        run_id, sid = waiting[i % len(waiting)]
        ctl = RunControl(run_id, self.h.settings)
        with _allowed():
            if choice == "retry":
                ctl.retry_step(sid, by="prop")
            elif choice == "skip":
                ctl.skip_step(sid, by="prop")
            else:
                ctl.abort(by="prop")

    # ------------------------------------------------------------------ invariants

    @invariant()
    def invariants_hold(self) -> None:
        self.h.check()


def _note_successors(member: str, successors: Any, ended: Any = ()) -> None:
    _current.noted = (member, list(successors), list(ended))


class _allowed:
    """An operator's request the run's state refuses (InvalidOperation) is no fault."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, InvalidOperation)


_CLIENT: list[Any] = []
_BROKER = object()  # recover_once's broker: every look into it is patched (StoreMachine)


def _drive(m: StoreMachine, run_id: str) -> None:
    """Deliver ``run_id``'s messages, each to its end, until none is left."""
    h = m.h
    while any(r == run_id for r, _ in h.broker):
        i = next(i for i, (r, _) in enumerate(h.broker) if r == run_id)
        m.deliver(i, "ok")
        d = h.deliveries[-1]
        while not d.done:
            d.advance()
        m.invariants_hold()


def _one_step(extra: str = "", cond: str = "success()") -> str:
    return f"name: one\nsteps:\n  - id: s0\n    run: 'true'\n    if: {cond}\n{extra}"


def test_a_run_paused_while_queued_for_its_group_is_admitted_when_a_slot_frees(store_client):  # type: ignore[no-untyped-def]
    """Found by the stateful test: a queued run that was paused was dropped from its
    group's queue when the slot freed (it was not ``queued``), and hung forever."""
    _CLIENT[:] = [store_client]
    m = StoreMachine()
    try:
        group = f"concurrency: {{group: {m.h.group}, limit: 1, on_conflict: queue}}\n"
        first = m.submit(_one_step(group))
        second = m.submit(_one_step(group))
        assert m.h.store.run_status(second) == "queued"
        m.pause(1)
        m.invariants_hold()
        _drive(m, first)  # the first run ends: its slot goes to the second
        assert m.h.store.run_status(first) == "succeeded"
        m.resume(1)
        _drive(m, second)
        assert m.h.store.run_status(second) == "succeeded"
    finally:
        m.teardown()


def test_a_cleanup_step_of_a_paused_run_cancelled_before_it_started_starts_the_run(store_client):  # type: ignore[no-untyped-def]
    """Found by the stateful test: a run paused before any step started, then cancelled,
    runs its always() step (cancel overrides the pause for cleanup), but the claim only
    started runs that were 'pending': no workflow_started event, and resume set the run
    back to 'pending' although a step had run."""
    _CLIENT[:] = [store_client]
    m = StoreMachine()
    try:
        run_id = m.submit(_one_step(cond="always()"))
        m.pause(0)
        m.cancel(0)
        _drive(m, run_id)
        assert m.h.store.run_status(run_id) == "cancelled"
        types = [e["type"] for _, e in m.h.store.events(run_id)]
        assert types.count("workflow_started") == 1
    finally:
        m.teardown()


class AmqpStoreMachine(StoreMachine):
    """The broker is AMQP: a dead worker's message always goes back to its queue (the
    broker redelivers what an unacknowledged consumer held), and the reconciler takes its
    broker-less branch, which stops watching a step once it has published it again."""

    LOSES_MESSAGES = False


@pytest.mark.parametrize("machine", [StoreMachine, AmqpStoreMachine], ids=["redis", "amqp"])
def test_store_invariants_hold_under_random_interleavings(
    redis_client: Any, machine: type[StoreMachine]
) -> None:
    """Deliveries, duplicates, crashes at every store call, lapsed leases, the reconciler,
    cancel, pause/resume, approvals, decisions, max_active_steps and concurrency groups:
    after every rule, every invariant of tests/invariants.py holds, with the broker's
    behaviour on a dead worker of Redis and of AMQP."""
    # real Redis only, for CI's time (it holds on the in-memory double as well); the
    # regression tests in this file and the store's contract suites run on both
    _CLIENT[:] = [redis_client]
    TALLY.clear()
    try:
        run_state_machine_as_test(machine, settings=PROFILE)
    finally:
        print("stateful test reached:", dict(sorted(TALLY.items())))


__all__ = ["TERMINAL", "AmqpStoreMachine", "StoreMachine"]


def test_a_run_admitted_by_a_worker_that_dies_before_publishing_it_still_runs(store_client):  # type: ignore[no-untyped-def]
    """The last step of a run in a concurrency group ends and admits the queued run; the
    worker dies before it publishes the admitted run (its FINISH went through). The
    admitted run must not hang: its first steps are watched from the admission, so the
    reconciler publishes them."""
    _CLIENT[:] = [store_client]
    m = StoreMachine()
    try:
        group = f"concurrency: {{group: {m.h.group}, limit: 1, on_conflict: queue}}\n"
        first = m.submit(_one_step(group))
        second = m.submit(_one_step(group))
        m.deliver(0, "ok")
        d = m.h.deliveries[-1]
        while d.point != "finish_step":
            d.advance()
        d.advance()  # FINISH: the first run ends and admits the second
        assert m.h.store.run_status(first) == "succeeded"
        assert m.h.store.run_status(second) == "pending"
        m.crash(0, requeue=True)  # before it publishes the admitted run
        m.settle()
        assert m.h.store.run_status(second) == "succeeded"
    finally:
        m.teardown()


def test_cleanup_steps_of_a_run_cancelled_before_their_needs_ran_still_run(store_client):  # type: ignore[no-untyped-def]
    """Found by the stateful test: a dynamic run cancelled before its first steps ran
    keeps its always() steps, but the steps they need were cancelled while pending, so
    nothing joined them: the cleanup never became ready and the run never ended."""
    _CLIENT[:] = [store_client]
    m = StoreMachine()
    try:
        run_id = m.submit(
            "name: c\nsteps:\n  - id: a\n    run: 'true'\n  - id: b\n    run: 'true'\n"
            "    needs: [a]\n    if: failure()\n  - id: cleanup\n    run: 'true'\n"
            "    needs: [a, b]\n    if: always()\n"
        )
        m.cancel(0)
        m.settle()
        steps = m.h.store.step_hashes(run_id, ["a", "b", "cleanup"])
        assert steps["cleanup"]["status"] == "succeeded"
        assert m.h.store.run_status(run_id) == "cancelled"
    finally:
        m.teardown()


def test_a_running_step_whose_worker_and_republished_message_are_lost_is_sent_again(
    redis_client: Any,
) -> None:
    """Found by the stateful test (long profile): s0's worker dies while its Bash runs and
    its message is lost with it; once the lease lapses the reconciler publishes s0 again,
    and that message is lost too (kombu's Redis transport loses a message popped by a
    worker killed before it recorded it unacknowledged). The step must stay watched until
    it hands on, so the reconciler publishes it again; the stand-in ran the reconciler's
    broker-less branch (AMQP, whose messages are not lost), which stops watching after a
    republish: s0 was left running, s1 pending, nothing queued, nothing watched."""
    _CLIENT[:] = [redis_client]
    m = StoreMachine()
    try:
        run_id = m.submit(
            "name: two\nsteps:\n  - id: s0\n    run: 'true'\n  - id: s1\n    run: 'true'\n"
            "    needs: [s0]\n    if: success()\n"
        )
        m.deliver(0, "ok")
        d = m.h.deliveries[-1]
        while d.point != "bash":
            d.advance()
        m.crash(0, requeue=False)  # the worker dies in Bash; its message is gone
        m.lease_period_passes(set())
        m.reconcile()  # s0 published again
        assert m.h.broker == [(run_id, "s0")]
        m.deliver(0, "ok", calls=0)
        m.crash(0, requeue=False)  # and that message is lost too
        m.invariants_hold()
        watch = m.h.client.zscore(m.h.store.keys.leases, f"{run_id}|s0")
        assert watch is not None, "s0 is running under no lease and watched by nothing"
        m.reconcile()
        assert m.h.broker == [(run_id, "s0")]
        m.settle()
        assert m.h.store.run_status(run_id) == "succeeded"
    finally:
        m.teardown()


@pytest.mark.parametrize("paused", [False, True])
def test_a_run_cancelled_while_queued_for_its_group_runs_no_cleanup_step(
    redis_client: Any, paused: bool
) -> None:
    """Found by the stateful test (long profile): a run waiting for its concurrency
    group's slot (queued), cancelled, kept its always() step as cleanup and published it:
    the step ran beside the run holding the group's only slot, with the run still
    ``queued`` and no workflow_started. A queued run has run nothing, so nothing is kept:
    it ends cancelled at once, and the run holding the slot goes on alone."""
    _CLIENT[:] = [redis_client]
    m = StoreMachine()
    try:
        group = f"concurrency: {{group: {m.h.group}, limit: 1, on_conflict: queue}}\n"
        first = m.submit(_one_step(group))
        second = m.submit(_one_step(group, cond="always()"))
        assert m.h.store.run_status(second) == "queued"
        if paused:
            m.pause(1)
        m.cancel(1)
        m.invariants_hold()
        assert m.h.store.run_status(second) == "cancelled"
        steps = m.h.store.step_hashes(second, ["s0"])
        assert steps["s0"]["status"] == "cancelled"
        assert [r for r, _ in m.h.broker] == [first]
        _drive(m, first)
        assert m.h.store.run_status(first) == "succeeded"
        types = [e["type"] for _, e in m.h.store.events(second)]
        assert "workflow_started" not in types and "step_started" not in types
    finally:
        m.teardown()
