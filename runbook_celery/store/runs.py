"""Runs: create, read, expire and delete a run's record."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from ..core.errors import BackendUnavailable, RunNotFound
from ..definition.vocabulary import RunStatus, StepStatus
from ..plan.runrecord import RunRecord, StepRecord
from ..plan.snapshotversion import checked_snapshot
from .base import StoreBase
from .codec import _decode, _describe, _epoch, _s, now_iso
from .scripts import GLOBAL_EVENTS_MAXLEN


class RunRecords(StoreBase):
    def create_run(
        self, run_id: str, snapshot: Mapping[str, Any], sha256: str, **extra: str
    ) -> None:
        """Record a new run and its pending steps in one transaction."""
        self._create(run_id, snapshot, sha256, extra, if_absent=False)

    def create_run_once(
        self, run_id: str, snapshot: Mapping[str, Any], sha256: str, **extra: str
    ) -> bool:
        """``create_run`` only if no run has that id: a child run's id is derived, and a
        step delivered again must not record its child twice. Returns whether it did."""
        return self._create(run_id, snapshot, sha256, extra, if_absent=True)

    def _create(
        self,
        run_id: str,
        snapshot: Mapping[str, Any],
        sha256: str,
        extra: Mapping[str, str],
        *,
        if_absent: bool,
    ) -> bool:
        k = self.keys
        now = now_iso()
        step_ids = [s["id"] for s in snapshot["steps"]]
        reused = snapshot.get("reused") or {}
        reused_children = snapshot.get("reused_child_runs") or {}
        run_fields: dict[FieldT, EncodableT] = {
            "id": run_id,
            "workflow": snapshot["workflow"],
            "status": RunStatus.PENDING.value,
            "params": json.dumps(snapshot["params"]),
            "snapshot": json.dumps(snapshot),
            "sha256": sha256,
            "mode": snapshot["mode"],
            "created_at": now,
            "remaining": len(step_ids) - len(reused),
            "failures": 0,
            "steps": json.dumps(step_ids),
            "retention": self.retention,
        }
        run_fields.update(extra.items())  # as **extra would; a dict's key type is invariant
        try:
            pipe = self.r.pipeline(transaction=True)
            if if_absent:
                pipe.watch(k.run(run_id))  # type: ignore[no-untyped-call]
                if pipe.exists(k.run(run_id)):
                    pipe.reset()
                    return False
                pipe.multi()
            pipe.hset(k.run(run_id), mapping=run_fields)
            for sid in step_ids:
                fields: dict[FieldT, EncodableT] = {
                    "status": StepStatus.PENDING.value,
                    "attempts": 0,
                }
                if sid in reused:
                    fields = {
                        "status": StepStatus.SUCCEEDED.value,
                        "attempts": 0,
                        "outputs": json.dumps(reused[sid]),
                        "reused": 1,
                        "reason": f"reused from run {extra.get('rerun_of', '?')}",
                    }
                    if sid in reused_children:
                        fields["child_run"] = reused_children[sid]
                pipe.hset(k.step(run_id, sid), mapping=fields)
            pipe.zadd(k.runs_index, {run_id: _epoch()})
            pipe.zadd(k.event_runs, {run_id: math.inf})  # finalize scores its end
            pipe.execute()
        except redis.WatchError:
            return False  # recorded meanwhile by another delivery
        except redis.RedisError as exc:
            raise BackendUnavailable(f"cannot record run in Redis: {_describe(exc)}") from exc
        return True

    def delete_run(self, run_id: str) -> None:
        """Remove every key of a run (used to roll back a run that could not be enqueued)."""
        steps = self.step_ids(run_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*self.keys.run_keys(run_id, steps))
        pipe.zrem(self.keys.runs_index, run_id)
        pipe.zrem(self.keys.event_runs, run_id)
        if steps:
            pipe.zrem(self.keys.leases, *(f"{run_id}|{s}" for s in steps))
        pipe.execute()

    def step_ids(self, run_id: str) -> list[str]:
        raw = self.r.hget(self.keys.run(run_id), "steps")
        return json.loads(raw) if raw else []

    def snapshot(self, run_id: str) -> dict[str, Any]:
        raw = self.r.hget(self.keys.run(run_id), "snapshot")
        if raw is None:
            raise RunNotFound(run_id)
        snapshot: dict[str, Any] = json.loads(raw)  # untyped until the snapshot has a model
        checked_snapshot(run_id, snapshot)  # a newer release's format is refused, not guessed
        return snapshot

    def secret_overrides(self, run_id: str) -> list[str]:
        """Secret values an operator gave this run with ``retry --env`` (masked like the
        worker's own)."""
        raw = self.r.hget(self.keys.run(run_id), "secret_overrides")
        return list(json.loads(raw)) if raw else []

    def run_status(self, run_id: str) -> str | None:
        raw = self.r.hget(self.keys.run(run_id), "status")
        return raw.decode() if isinstance(raw, bytes) else raw

    def get_run(self, run_id: str) -> RunRecord:
        """The whole run record, read in one round trip."""
        k = self.keys
        try:
            run = _decode(self.r.hgetall(k.run(run_id)))
            if not run:
                raise RunNotFound(run_id)
            step_ids = json.loads(run.get("steps", "[]"))
            pipe = self.r.pipeline(transaction=False)
            for sid in step_ids:
                pipe.hgetall(k.step(run_id, sid))
            raw_steps = pipe.execute()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"cannot read run from Redis: {_describe(exc)}") from exc
        steps: dict[str, StepRecord] = {}
        hidden = frozenset(json.loads(run.get("secret_overrides") or "[]"))
        for sid, raw in zip(step_ids, raw_steps, strict=True):
            h = _decode(raw)
            steps[sid] = StepRecord.from_hash(h, hidden)
            if h.get("instances"):  # a fanned-out step: its instances follow it
                ids = json.loads(h["instances"])
                for iid, ih in self.step_hashes(run_id, ids).items():
                    steps[iid] = StepRecord.from_hash(ih, hidden)
        return RunRecord.from_hash(run, steps)

    def step_hashes(self, run_id: str, step_ids: list[str]) -> dict[str, dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for sid in step_ids:
            pipe.hgetall(self.keys.step(run_id, sid))
        return {sid: _decode(h) for sid, h in zip(step_ids, pipe.execute(), strict=True)}

    def _instance_ids(self, run_id: str, step_ids: list[str]) -> list[str]:
        return [i for ids in self._instances_by_parent(run_id, step_ids).values() for i in ids]

    def _instances_by_parent(self, run_id: str, step_ids: list[str]) -> dict[str, list[str]]:
        """The instance ids of each fanned-out step among ``step_ids``."""
        pipe = self.r.pipeline(transaction=False)
        for sid in step_ids:
            pipe.hget(self.keys.step(run_id, sid), "instances")
        return {
            sid: json.loads(raw) for sid, raw in zip(step_ids, pipe.execute(), strict=True) if raw
        }

    def run_mode(self, run_id: str) -> str | None:
        raw = self.r.hget(self.keys.run(run_id), "mode")
        return _s(raw) if raw is not None else None

    def run_status_so_far(self, run_id: str) -> str:
        """``succeeded`` while nothing has failed, else ``failed`` or ``cancelled``: the
        outcome the run would have if it ended now (the same rule as its finalize)."""
        cancel, reason, failures = self.r.hmget(
            self.keys.run(run_id), "cancel_requested", "cancel_reason", "failures"
        )
        if cancel in (b"1", "1"):
            return "failed" if _s(reason or "") == "timeout" else "cancelled"
        return "failed" if int(failures or 0) > 0 else "succeeded"

    def cancel_requested(self, run_id: str) -> bool:
        return self.r.hget(self.keys.run(run_id), "cancel_requested") in (b"1", "1")

    def cancel_reason(self, run_id: str) -> str | None:
        raw = self.r.hget(self.keys.run(run_id), "cancel_reason")
        return _s(raw) if raw is not None else None

    def skip_run(self, run_id: str, reason: str) -> None:
        """A run that will not run at all (its concurrency group was full)."""
        k = self.keys
        now = now_iso()
        run = _decode(self.r.hgetall(k.run(run_id)))
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            k.run(run_id),
            mapping={"status": "skipped", "finished_at": now, "reason": reason, "remaining": 0},
        )
        for sid in json.loads(run.get("steps", "[]")):
            pipe.hset(k.step(run_id, sid), mapping={"status": "skipped", "reason": reason})
        event: dict[FieldT, EncodableT] = {
            "type": "workflow_skipped",
            "run_id": run_id,
            "workflow": run.get("workflow", ""),
            "reason": reason,
            "ts": now,
        }
        pipe.xadd(k.run_events(run_id), event)
        pipe.xadd(k.global_events, event, maxlen=GLOBAL_EVENTS_MAXLEN, approximate=True)
        pipe.xadd(k.run_ended(run_id), {"status": "skipped"})
        pipe.zadd(k.event_runs, {run_id: int(_epoch() * 1000)}, xx=True)
        pipe.execute()
        self.expire_run(run_id)

    def expire_run(self, run_id: str) -> None:
        """Finished runs live for the retention period, then vanish with their logs."""
        steps = self.step_ids(run_id)
        steps += self._instance_ids(run_id, steps)
        pipe = self.r.pipeline(transaction=False)
        for key in self.keys.run_keys(run_id, steps):
            pipe.expire(key, self.retention)
        pipe.execute()
