"""Operator control in Redis: pause/resume, parked steps, approvals, decisions, concurrency.

A step that may not start now (run paused, approval pending, too many steps active, or a
failure awaiting a decision) is *parked*: its Celery message, rebuilt from the request
with its chain/chord continuation, is stored in Redis and the delivery is acknowledged.
No worker slot is held and nothing polls. Resume, approve, a freed slot or a decision
publishes the parked message again. Each transition is one Lua script (``lua/``);
parking itself happens in the store's claim (``RunStore.start_step``), so the check of
the gate and the parking are one transition, and slots (a set of step ids per run) are
given back inside the transitions that end an execution.
"""

from __future__ import annotations

import json
from typing import Any

from redis.typing import EncodableT

from ..core.errors import InvalidOperation, RunNotFound
from ..core.settings import get_settings
from .codec import _s, now_iso
from .records import Outcome
from .runstore import RunStore
from .scripts import register


class Gates:
    """Operator-control transitions on top of a RunStore (same client, same prefix)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        r = store.r
        self._pause_resume = register(r, "pause_resume")
        self._open = register(r, "open_gate")
        self._await = register(r, "await_decision")
        self._admit = register(r, "admit")

    # ------------------------------------------------------------------ pause / resume

    def pause(self, run_id: str, by: str) -> None:
        self._toggle(run_id, by, "pause")

    def resume(self, run_id: str, by: str) -> list[dict[str, Any]]:
        """Resume; returns the parked messages to publish again."""
        return self._toggle(run_id, by, "resume")

    def _toggle(self, run_id: str, by: str, action: str) -> list[dict[str, Any]]:
        k = self.store.keys
        workflow = _s(self.store.r.hget(k.run(run_id), "workflow")) or ""
        res = [
            _s(x)
            for x in self._pause_resume(
                keys=[k.run(run_id), k.run_events(run_id), k.global_events],
                args=[run_id, now_iso(), workflow, by, action, get_settings().lease_seconds],
            )
        ]
        if res[0] == "missing":
            raise RunNotFound(run_id)
        if res[0] == "finished":
            raise InvalidOperation(f"run {run_id} already ended ({res[1]}); nothing to {action}")
        return [json.loads(m) for m in res[1:]]

    # ------------------------------------------------------------------ gates on a step

    def open_gate(
        self,
        run_id: str,
        step_id: str,
        *,
        expected: str,
        event: str,
        by: str,
        field: str = "decided_by",
        value: str = "",
        secrets: list[str] | None = None,
    ) -> dict[str, Any] | None:
        """``secrets``: values to mask in this run's output from now on (``retry --env``)."""
        k = self.store.keys
        workflow = _s(self.store.r.hget(k.run(run_id), "workflow")) or ""
        res = [
            _s(x)
            for x in self._open(
                keys=[
                    k.run(run_id),
                    k.step(run_id, step_id),
                    k.run_events(run_id),
                    k.global_events,
                ],
                args=[
                    run_id,
                    step_id,
                    now_iso(),
                    workflow,
                    by,
                    expected,
                    event,
                    field,
                    value or by,
                    get_settings().lease_seconds,
                    json.dumps(secrets) if secrets else "",
                ],
            )
        ]
        if res[0] == "wrong":
            raise InvalidOperation(
                f"step {step_id!r} of run {run_id} is {res[1]}, not {expected.replace('_', ' ')}"
            )
        return json.loads(res[1]) if res[1] else None

    def await_decision(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        workflow: str,
        signature: dict[str, Any],
        exit_code: int | None,
        reason: str,
        stderr: list[str],
        history: dict[str, Any],
        attempt: int,
    ) -> Outcome:
        """A failed step waits for an operator's decision (holder only, as FINISH)."""
        k = self.store.keys
        keys = k.transition(run_id, step_id)
        args: list[EncodableT] = [
            run_id,
            step_id,
            token,
            now_iso(),
            workflow,
            json.dumps(signature),
            "" if exit_code is None else exit_code,
            reason,
            json.dumps(stderr),
            json.dumps(history),
            attempt,
        ]
        return Outcome.from_reply(self._await(keys=keys, args=args))

    # ------------------------------------------------------------------ concurrency groups

    def admit(self, run_id: str, group: str, limit: int, on_conflict: str) -> tuple[str, list[str]]:
        """Let a run into its concurrency group: start, queue, skip, or cancel the others."""
        k = self.store.keys
        keys = [k.cgroup(group), k.cgroup_queue(group), k.run(run_id)]
        res = [_s(x) for x in self._admit(keys=keys, args=[run_id, limit, on_conflict])]
        if res[0] == "corrupt":
            raise InvalidOperation(
                f"concurrency group {group!r}: Redis key {res[1]} is not what runbook-celery "
                "wrote there; delete it (redis-cli DEL) and trigger again"
            )
        return res[0], res[1:]
