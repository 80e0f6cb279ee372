"""Run and step state plus the event log, in Redis.

Every state transition is one Lua script, so steps of one run finishing at the same
moment on several workers never lose an update, and the transition, its event and the
run's bookkeeping (remaining steps, final status) happen together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from .errors import BackendUnavailable, RunNotFound
from .events import RunStatus, StepStatus
from .keys import Keys
from .runrecord import RunRecord, StepRecord

GLOBAL_EVENTS_MAXLEN = 100_000
RUN_EVENTS_MAXLEN = 100_000


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Shared Lua helpers: emit an event to the run stream and the global stream.
_LUA_EMIT = f"""
local function emit(run_events, global_events, fields)
  redis.call('XADD', run_events, 'MAXLEN', '~', {RUN_EVENTS_MAXLEN}, '*', unpack(fields))
  redis.call('XADD', global_events, 'MAXLEN', '~', {GLOBAL_EVENTS_MAXLEN}, '*', unpack(fields))
end
local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'skipped' or s == 'cancelled'
end
"""

# KEYS: run, step, lease, run_events, global_events, need_step_1..n, output_step_1..m
# ARGV: run_id, step_id, token, now, lease_s, max_attempts, workflow, check_needs, n
# -> {'start', attempt, outputs_1..n} | {'done', status} | {'busy', holder}
#    | {'blocked', need, status} | {'exhausted', attempts} | {'cancelled'}
_LUA_START = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if is_terminal(st) then return {'done', st} end
local run_status = redis.call('HGET', KEYS[1], 'status')
if not run_status then return {'done', 'gone'} end
if run_status == 'cancelled' or redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  return {'cancelled'}
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then return {'busy', holder} end
local n_needs = tonumber(ARGV[9])
if ARGV[8] == '1' then
  for i = 6, 5 + n_needs do
    local ns = redis.call('HMGET', KEYS[i], 'status', 'allowed_failure')
    if ns[1] ~= 'succeeded' and not (ns[1] == 'failed' and ns[2] == '1') then
      return {'blocked', i - 5, ns[1] or 'pending'}
    end
  end
end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
if attempt > tonumber(ARGV[6]) then return {'exhausted', attempt - 1} end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[5])
redis.call('HSET', KEYS[2], 'status', 'running', 'started_at', ARGV[4])
if run_status == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[4])
  emit(KEYS[4], KEYS[5], {'type', 'workflow_started', 'run_id', ARGV[1],
       'workflow', ARGV[7], 'ts', ARGV[4]})
end
emit(KEYS[4], KEYS[5], {'type', 'step_started', 'run_id', ARGV[1], 'workflow', ARGV[7],
     'step', ARGV[2], 'attempt', tostring(attempt), 'ts', ARGV[4]})
local out = {'start', attempt}
for i = 6 + n_needs, #KEYS do
  out[#out + 1] = redis.call('HGET', KEYS[i], 'outputs') or '{}'
end
return out
"""
)

# KEYS: run, step, lease, run_events, global_events,
#       then n_skip step keys, then n_children arrived-set keys
# ARGV: run_id, step_id, token, now, status, exit_code, outputs_json, stderr_tail_json,
#       reason, allowed_failure, workflow, attempt, n_skip, skip_ids..., n_children,
#       (child_id, child_need_count)...
# -> {remaining, final_status_or_empty, ready_child_1, ...} | {'dup'}
_LUA_FINISH = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if is_terminal(st) then return {'dup', st} end
if not redis.call('HGET', KEYS[1], 'status') then return {'dup', 'gone'} end
local status = ARGV[5]
local fields = {'status', status, 'finished_at', ARGV[4]}
if ARGV[6] ~= '' then fields[#fields+1] = 'exit_code'; fields[#fields+1] = ARGV[6] end
if ARGV[7] ~= '' then fields[#fields+1] = 'outputs'; fields[#fields+1] = ARGV[7] end
if ARGV[8] ~= '' then fields[#fields+1] = 'stderr_tail'; fields[#fields+1] = ARGV[8] end
if ARGV[9] ~= '' then fields[#fields+1] = 'reason'; fields[#fields+1] = ARGV[9] end
if ARGV[10] == '1' then fields[#fields+1] = 'allowed_failure'; fields[#fields+1] = '1' end
if not st or st == 'pending' then
  -- never started (skipped/cancelled/exhausted): give it a start time for the record
  fields[#fields+1] = 'started_at'
  fields[#fields+1] = redis.call('HGET', KEYS[2], 'started_at') or ARGV[4]
end
redis.call('HSET', KEYS[2], unpack(fields))
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[3] or not holder then redis.call('DEL', KEYS[3]) end
local ev = {'type', 'step_' .. status, 'run_id', ARGV[1], 'workflow', ARGV[11],
            'step', ARGV[2], 'ts', ARGV[4]}
if ARGV[12] ~= '' then ev[#ev+1] = 'attempt'; ev[#ev+1] = ARGV[12] end
if ARGV[6] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[6] end
if ARGV[9] ~= '' then ev[#ev+1] = 'reason'; ev[#ev+1] = ARGV[9] end
emit(KEYS[4], KEYS[5], ev)
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
if status == 'failed' and ARGV[10] ~= '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
local n_skip = tonumber(ARGV[13])
for i = 1, n_skip do
  local key = KEYS[5 + i]
  local s = redis.call('HGET', key, 'status')
  if not is_terminal(s) and s ~= 'running' then
    local sid = ARGV[13 + i]
    redis.call('HSET', key, 'status', 'skipped', 'finished_at', ARGV[4],
               'reason', 'needs ' .. ARGV[2] .. ' ' .. status)
    emit(KEYS[4], KEYS[5], {'type', 'step_skipped', 'run_id', ARGV[1], 'workflow', ARGV[11],
         'step', sid, 'ts', ARGV[4]})
    remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  end
end
local base = 13 + n_skip
local n_children = tonumber(ARGV[base + 1])
local out = {remaining, ''}
for i = 1, n_children do
  local child = ARGV[base + 2 * i]
  local need_count = tonumber(ARGV[base + 2 * i + 1])
  local key = KEYS[5 + n_skip + i]
  redis.call('SADD', key, ARGV[2])
  if redis.call('SCARD', key) >= need_count then out[#out + 1] = child end
end
if remaining <= 0 then
  local final = 'succeeded'
  if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then final = 'cancelled'
  elseif tonumber(redis.call('HGET', KEYS[1], 'failures') or '0') > 0 then final = 'failed' end
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', ARGV[4])
  emit(KEYS[4], KEYS[5], {'type', 'workflow_' .. final, 'run_id', ARGV[1],
       'workflow', ARGV[11], 'ts', ARGV[4]})
  out[2] = final
end
return out
"""
)


@dataclass(frozen=True)
class StartDecision:
    """What the step task should do, as decided atomically by the store."""

    action: str  # start | done | busy | blocked | exhausted | cancelled
    attempt: int = 0
    need_outputs: dict[str, dict[str, str]] | None = None
    status: str | None = None  # for done / blocked
    blocked_by: str | None = None


@dataclass(frozen=True)
class FinishOutcome:
    duplicate: bool
    remaining: int = 0
    run_status: str | None = None  # set when this transition ended the run
    ready: tuple[str, ...] = ()


class RunStore:
    """Reads and writes runs; one instance per Redis client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "runbook", retention: int = 7 * 86400):
        self.r = client
        self.keys = Keys(prefix)
        self.retention = retention
        self._start = client.register_script(_LUA_START)
        self._finish = client.register_script(_LUA_FINISH)

    # -------------------------------------------------------------- create / read

    def create_run(
        self, run_id: str, snapshot: Mapping[str, Any], sha256: str, **extra: str
    ) -> None:
        """Record a new run and its pending steps in one transaction."""
        k = self.keys
        now = now_iso()
        step_ids = [s["id"] for s in snapshot["steps"]]
        run_fields = {
            "id": run_id,
            "workflow": snapshot["workflow"],
            "status": RunStatus.PENDING.value,
            "params": json.dumps(snapshot["params"]),
            "snapshot": json.dumps(snapshot),
            "sha256": sha256,
            "mode": snapshot["mode"],
            "created_at": now,
            "remaining": len(step_ids),
            "failures": 0,
            "steps": json.dumps(step_ids),
            **extra,
        }
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(k.run(run_id), mapping=run_fields)
            for sid in step_ids:
                pipe.hset(
                    k.step(run_id, sid), mapping={"status": StepStatus.PENDING.value, "attempts": 0}
                )
            pipe.zadd(k.runs_index, {run_id: _epoch()})
            pipe.execute()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"cannot record run in Redis: {_describe(exc)}") from exc

    def delete_run(self, run_id: str) -> None:
        """Remove every key of a run (used to roll back a run that could not be enqueued)."""
        steps = self.step_ids(run_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(*self.keys.run_keys(run_id, steps))
        pipe.zrem(self.keys.runs_index, run_id)
        pipe.execute()

    def step_ids(self, run_id: str) -> list[str]:
        raw = self.r.hget(self.keys.run(run_id), "steps")
        return json.loads(raw) if raw else []

    def snapshot(self, run_id: str) -> dict[str, Any]:
        raw = self.r.hget(self.keys.run(run_id), "snapshot")
        if raw is None:
            raise RunNotFound(run_id)
        return json.loads(raw)

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
        steps = {
            sid: StepRecord.from_hash(_decode(h))
            for sid, h in zip(step_ids, raw_steps, strict=True)
        }
        return RunRecord.from_hash(run, steps)

    def events(
        self, run_id: str | None = None, since: str = "0-0", count: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        key = self.keys.run_events(run_id) if run_id else self.keys.global_events
        entries = self.r.xrange(key, min=f"({since}" if since != "0-0" else "-", count=count)
        return [(_s(eid), _decode(fields)) for eid, fields in entries]

    def follow_events(
        self, run_id: str | None = None, since: str = "0-0", block_ms: int = 5000
    ) -> Iterator[tuple[str, dict[str, str]]]:
        """Events after ``since``, blocking for new ones (XREAD BLOCK: no polling floor)."""
        key = self.keys.run_events(run_id) if run_id else self.keys.global_events
        last = since
        while True:
            resp = self.r.xread({key: last}, block=block_ms, count=500)
            if not resp:
                yield ("", {})  # heartbeat: lets the caller check deadlines
                continue
            for _, entries in resp:
                for eid, fields in entries:
                    last = _s(eid)
                    yield last, _decode(fields)

    # -------------------------------------------------------------- transitions

    def start_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        needs: list[str],
        output_steps: list[str],
        workflow: str,
        lease_seconds: int,
        max_attempts: int,
        check_needs: bool = True,
    ) -> StartDecision:
        """Claim a step atomically; returns the outputs of ``output_steps`` when it starts."""
        k = self.keys
        keys = [
            k.run(run_id),
            k.step(run_id, step_id),
            k.lease(run_id, step_id),
            k.run_events(run_id),
            k.global_events,
            *(k.step(run_id, n) for n in needs),
            *(k.step(run_id, n) for n in output_steps),
        ]
        args = [
            run_id,
            step_id,
            token,
            now_iso(),
            lease_seconds,
            max_attempts,
            workflow,
            int(check_needs),
            len(needs),
        ]
        res = [_s(x) for x in self._start(keys=keys, args=args)]
        action = res[0]
        if action == "start":
            outs = {n: json.loads(raw) for n, raw in zip(output_steps, res[2:], strict=True)}
            return StartDecision("start", attempt=int(res[1]), need_outputs=outs)
        if action == "done":
            return StartDecision("done", status=res[1])
        if action == "blocked":
            return StartDecision("blocked", blocked_by=needs[int(res[1]) - 1], status=res[2])
        if action == "exhausted":
            return StartDecision("exhausted", attempt=int(res[1]))
        return StartDecision(action)

    def finish_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        status: StepStatus,
        workflow: str,
        exit_code: int | None = None,
        outputs: Mapping[str, str] | None = None,
        stderr_tail: list[str] | None = None,
        reason: str | None = None,
        allowed_failure: bool = False,
        attempt: int | None = None,
        skip: Iterable[str] = (),
        children: Mapping[str, int] | None = None,
    ) -> FinishOutcome:
        """Record a terminal step status; skip ``skip``; join ``children`` (dynamic mode)."""
        k = self.keys
        skip = list(skip)
        children = dict(children or {})
        keys = [
            k.run(run_id),
            k.step(run_id, step_id),
            k.lease(run_id, step_id),
            k.run_events(run_id),
            k.global_events,
            *(k.step(run_id, s) for s in skip),
            *(k.arrived(run_id, c) for c in children),
        ]
        args: list[Any] = [
            run_id,
            step_id,
            token,
            now_iso(),
            status.value,
            "" if exit_code is None else exit_code,
            "" if outputs is None else json.dumps(dict(outputs)),
            "" if not stderr_tail else json.dumps(stderr_tail),
            reason or "",
            int(allowed_failure),
            workflow,
            "" if attempt is None else attempt,
            len(skip),
            *skip,
            len(children),
        ]
        for child, count in children.items():
            args += [child, count]
        res = [_s(x) for x in self._finish(keys=keys, args=args)]
        if res[0] == "dup":
            return FinishOutcome(duplicate=True)
        outcome = FinishOutcome(False, int(res[0]), res[1] or None, tuple(res[2:]))
        if outcome.run_status:
            self.expire_run(run_id)
        return outcome

    def refresh_lease(self, run_id: str, step_id: str, token: str, seconds: int) -> bool:
        """Extend our lease; False when another attempt holds it (we were superseded)."""
        key = self.keys.lease(run_id, step_id)
        holder = self.r.get(key)
        if holder is not None and _s(holder) != token:
            return False
        self.r.set(key, token, ex=seconds)
        return True

    def cancel_requested(self, run_id: str) -> bool:
        return self.r.hget(self.keys.run(run_id), "cancel_requested") in (b"1", "1")

    def expire_run(self, run_id: str) -> None:
        """Finished runs live for the retention period, then vanish with their logs."""
        steps = self.step_ids(run_id)
        pipe = self.r.pipeline(transaction=False)
        for key in self.keys.run_keys(run_id, steps):
            pipe.expire(key, self.retention)
        pipe.execute()


def _epoch() -> float:
    return datetime.now(UTC).timestamp()


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _decode(mapping: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in mapping.items()}


def _describe(exc: Exception) -> str:
    """An error message without credentials (redis-py messages can include the URL)."""
    from .redisconn import redact

    return redact(str(exc))
