"""The store's invariants, each one function, checked after every rule of the stateful test.

``tests/test_stateful_invariants.py`` drives the real store (its Lua scripts on real
Redis) and the step task's decision logic through random interleavings, records what it
saw succeed in an ``Observed``, and calls ``check_all`` after every rule. Each function
raises ``AssertionError`` with the run and step it is about. docs/architecture.md
("Invariants") states them and names the Lua script that keeps each one.

They live in tests/ rather than in the product: two of them compare Redis with what the
test saw happen (which delivery is running Bash, which transitions were accepted), which
only a test knows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from runbook_celery.store import RunStore

TERMINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})
TERMINAL_RUN = frozenset({"succeeded", "failed", "cancelled", "skipped"})
STEP_END_EVENTS = {f"step_{s}" for s in TERMINAL}


@dataclass(frozen=True)
class LiveCopy:
    """A delivery running the step's Bash, its lease not lost (its fences not passed)."""

    run_id: str
    step_id: str
    token: str
    attempt: int


@dataclass
class Observed:
    """What the test saw happen: accepted transitions, per (run, step), by kind.

    Kinds: ``started`` (CLAIM answered start), ``parked`` (CLAIM parked the message),
    ``retrying``, ``handed_back``, ``awaiting_decision`` (accepted), ``discarded`` (a
    FINISH/RETRY/HANDBACK/decision refused: the delivery no longer held the step).
    """

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (run, step) -> terminal status first seen; a step that ended never changes again
    ended: dict[tuple[str, str], str] = field(default_factory=dict)
    # claims that started a step already seen ended (must stay empty)
    restarted: list[tuple[str, str, int]] = field(default_factory=list)
    # runs skipped whole by their concurrency group (skip_run writes no step events)
    skipped_runs: set[str] = field(default_factory=set)

    def saw(self, run_id: str, step_id: str, kind: str) -> None:
        self.counts[(run_id, step_id, kind)] += 1

    def count(self, run_id: str, step_id: str, kind: str) -> int:
        return self.counts[(run_id, step_id, kind)]


def _h(store: RunStore, key: str) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in store.r.hgetall(key).items()}


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _steps(store: RunStore, run_id: str) -> dict[str, dict[str, str]]:
    raw = store.r.hget(store.keys.run(run_id), "steps")
    ids = json.loads(raw) if raw else []
    return store.step_hashes(run_id, ids)


def at_most_one_live_copy(store: RunStore, live: Iterable[LiveCopy]) -> None:
    """At most one live copy of any step: of the deliveries running a step's Bash with
    their lease not lost, at most one per step, and it is the step's holder in Redis
    (token and attempt), the step is ``running`` and the lease key names it.

    Kept by CLAIM (``_LUA_START``: one holder, lease taken only when free), RENEW
    (``_LUA_REFRESH``: compare-and-set on token and attempt) and the lease fences
    (lease.py) that stop a copy whose lease lapsed before another may claim the step.
    """
    seen: dict[tuple[str, str], LiveCopy] = {}
    for copy in live:
        key = (copy.run_id, copy.step_id)
        assert key not in seen, f"two live copies of step {copy.step_id} of {copy.run_id}"
        seen[key] = copy
        h = store.step_hashes(copy.run_id, [copy.step_id])[copy.step_id]
        assert h.get("status") == "running", f"live copy of {key} but step is {h.get('status')}"
        assert h.get("holder") == copy.token, f"live copy of {key} is not the holder: {h}"
        assert h.get("attempts") == str(copy.attempt), f"live copy of {key} attempt: {h}"
        lease = store.r.get(store.keys.lease(copy.run_id, copy.step_id))
        assert lease is not None and _s(lease) == copy.token, f"live copy of {key}: lease {lease}"


def finished_step_never_runs_again(
    store: RunStore, run_ids: Iterable[str], observed: Observed
) -> None:
    """A finished step is never run again: once a step is terminal its status never
    changes, and no claim starts it afterwards.

    Kept by CLAIM (``_LUA_START`` answers ``done`` for a terminal step before anything
    else) and by every transition checking the status it moves from (FINISH, RETRY,
    HANDBACK, cancel's CANCEL_STEPS, the gates' OPEN).
    """
    assert not observed.restarted, f"claims started finished steps: {observed.restarted}"
    for run_id in run_ids:
        for sid, h in _steps(store, run_id).items():
            was = observed.ended.get((run_id, sid))
            now = h.get("status")
            if was is not None:
                assert now == was, f"step {sid} of {run_id} ended {was}, now {now}"
            elif now in TERMINAL:
                observed.ended[(run_id, sid)] = now


def slots_match_holders(store: RunStore, run_ids: Iterable[str], groups: dict[str, int]) -> None:
    """Active-step slots and concurrency-group slots equal exactly what holds them.

    ``max_active_steps``: a run's ``:active`` set is exactly its steps that are running
    under a claim (status ``running`` with a holder), never more than the limit; a
    finished run has none. Concurrency group: its active set is exactly the admitted runs
    of the group that have not ended, never more than the limit; every queued run is in
    the group's queue. ``groups``: group name -> limit.

    Kept by CLAIM (takes the slot, ``SADD``), FINISH/RETRY/HANDBACK/RELEASE and the
    decision gate (``release_slot``), finalize (``DEL :active``, ``release_group``) and
    ADMIT (``_LUA_ADMIT``).
    """
    by_group: dict[str, set[str]] = {}
    queued: dict[str, set[str]] = {}
    for run_id in run_ids:
        run = _h(store, store.keys.run(run_id))
        if not run:
            continue
        steps = _steps(store, run_id)
        active = {_s(x) for x in store.r.smembers(f"{store.keys.run(run_id)}:active")}
        limit = json.loads(run["snapshot"]).get("max_active_steps") or 0
        if run.get("finished_at") or not limit:
            assert not active, f"run {run_id} (limit {limit}) holds slots {active}"
        else:
            holding = {
                s for s, h in steps.items() if h.get("status") == "running" and h.get("holder")
            }
            assert active == holding, f"run {run_id}: slots {active} but held by {holding}"
            assert len(active) <= limit, f"run {run_id}: {len(active)} slots, limit {limit}"
        group = run.get("cgroup")
        if group:
            # a queued run stays queued while paused (resume puts back its status)
            if run["status"] == "queued" or (
                run["status"] == "paused" and run.get("status_before_pause") == "queued"
            ):
                queued.setdefault(group, set()).add(run_id)
            elif run["status"] not in TERMINAL_RUN and not run.get("finished_at"):
                by_group.setdefault(group, set()).add(run_id)
    for group, limit in groups.items():
        key = store.keys.cgroup(group)
        members = {_s(x) for x in store.r.zrange(key, 0, -1)}
        want = by_group.get(group, set())
        assert members == want, f"group {group}: slots {members} but admitted, live {want}"
        assert len(members) <= limit, f"group {group}: {len(members)} slots, limit {limit}"
        in_queue = {_s(x) for x in store.r.lrange(f"{key}:queue", 0, -1)}
        missing = queued.get(group, set()) - in_queue
        assert not missing, f"group {group}: queued runs {missing} not in its queue"


def finished_runs_are_terminal_and_expire(store: RunStore, run_ids: Iterable[str]) -> None:
    """Every run whose steps all finished is terminal, and its keys have a TTL.

    Its ``remaining`` counter equals its steps not finished (so the last one to finish
    ends the run); a run with every step finished has a terminal status and
    ``finished_at``, and its run, events and step keys expire; a run not finished has
    neither.

    Kept by FINISH and CANCEL_STEPS (``remaining`` decremented in the transition that
    ends a step; ``finalize`` and ``expire_run_keys`` in the same script), and by
    ``skip_run`` for a run its concurrency group skips.
    """
    for run_id in run_ids:
        k = store.keys
        run = _h(store, k.run(run_id))
        if not run:
            continue
        steps = _steps(store, run_id)
        open_steps = [s for s, h in steps.items() if h.get("status") not in TERMINAL]
        remaining = int(run.get("remaining", "0"))
        assert remaining == len(open_steps), (
            f"run {run_id}: remaining {remaining} but open steps {open_steps}"
        )
        if open_steps:
            assert not run.get("finished_at"), f"run {run_id} finished with {open_steps} open"
            assert store.r.ttl(k.run(run_id)) == -1, f"run {run_id} expires while open"
            continue
        assert run.get("status") in TERMINAL_RUN and run.get("finished_at"), (
            f"run {run_id}: every step finished but the run is {run.get('status')}"
        )
        for key in [k.run(run_id), k.run_events(run_id), *(k.step(run_id, s) for s in steps)]:
            assert store.r.ttl(key) > 0, f"run {run_id} finished but {key} does not expire"


def events_match_transitions(store: RunStore, run_ids: Iterable[str], observed: Observed) -> None:
    """No event is recorded for a transition that did not happen (nor twice for one).

    Per step: ``step_started`` as many times as a claim started it; ``step_retrying``,
    ``step_handed_back``, ``step_awaiting_decision`` and ``step_result_discarded`` as
    many times as those transitions were accepted (refused, for the last);
    ``step_waiting``/``step_awaiting_approval`` as many as claims parked it; exactly one
    end event (``step_<status>``) once it is terminal, of its status, none before (a run
    skipped whole by its concurrency group records ``workflow_skipped`` only). Per run:
    ``workflow_started`` once when a step started, and one ``workflow_<status>`` once it
    finished, of its status.

    Kept by every transition script emitting its event in the same script, after its
    checks (``emit`` in ``_LUA_EMIT``).
    """
    for run_id in run_ids:
        run = _h(store, store.keys.run(run_id))
        if not run:
            continue
        steps = _steps(store, run_id)
        events = [e for _, e in store.events(run_id)]
        per_step: Counter[tuple[str, str]] = Counter(
            (e.get("step", ""), e["type"]) for e in events if e.get("step")
        )
        per_run = Counter(e["type"] for e in events if not e.get("step"))
        kinds = {
            "step_started": "started",
            "step_retrying": "retrying",
            "step_handed_back": "handed_back",
            "step_awaiting_decision": "awaiting_decision",
            "step_result_discarded": "discarded",
        }
        started_any = False
        for sid, h in steps.items():
            for etype, kind in kinds.items():
                got, want = per_step[(sid, etype)], observed.count(run_id, sid, kind)
                assert got == want, f"{run_id}/{sid}: {got} {etype} events, {want} transitions"
            parked = per_step[(sid, "step_waiting")] + per_step[(sid, "step_awaiting_approval")]
            want = observed.count(run_id, sid, "parked")
            assert parked == want, f"{run_id}/{sid}: {parked} parked events, {want} parkings"
            ends = {t: per_step[(sid, t)] for t in STEP_END_EVENTS if per_step[(sid, t)]}
            status = h.get("status")
            if status in TERMINAL and run_id not in observed.skipped_runs:
                assert ends == {f"step_{status}": 1}, f"{run_id}/{sid} {status}: ends {ends}"
            elif status not in TERMINAL:
                assert not ends, f"{run_id}/{sid} is {status} but has end events {ends}"
            started_any = started_any or observed.count(run_id, sid, "started") > 0
        assert per_run["workflow_started"] == int(started_any), (
            f"run {run_id}: {per_run['workflow_started']} workflow_started, started {started_any}"
        )
        finals = {t: n for t, n in per_run.items() if t.removeprefix("workflow_") in TERMINAL_RUN}
        if run.get("finished_at"):
            assert finals == {f"workflow_{run['status']}": 1}, f"run {run_id}: finals {finals}"
        else:
            assert not finals, f"run {run_id} not finished but has {finals}"


def check_all(
    store: RunStore,
    run_ids: list[str],
    observed: Observed,
    live: list[LiveCopy],
    groups: dict[str, int],
) -> None:
    """Every invariant above, in one call (after each rule of the stateful test)."""
    at_most_one_live_copy(store, live)
    finished_step_never_runs_again(store, run_ids, observed)
    slots_match_holders(store, run_ids, groups)
    finished_runs_are_terminal_and_expire(store, run_ids)
    events_match_transitions(store, run_ids, observed)
