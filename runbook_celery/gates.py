"""Operator control in Redis: pause/resume, parked steps, approvals, decisions, concurrency.

A step that may not start now (run paused, approval pending, too many steps active, or a
failure awaiting a decision) is *parked*: its Celery message, rebuilt from the request
with its chain/chord continuation, is stored in Redis and the delivery is acknowledged.
No worker slot is held and nothing polls. Resume, approve, a freed slot or a decision
publishes the parked message again. Each transition is one Lua script; parking itself
happens in the store's claim (``RunStore.start_step``), so the check of the gate and the
parking are one transition, and slots (a set of step ids per run) are given back inside
the transitions that end an execution.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidOperation, RunNotFound
from .settings import get_settings
from .store import _LUA_EMIT, Outcome, RunStore, _s, now_iso

# (resume: the parked steps are pending again and watched, as their messages are published)
# KEYS: run, run_events, global_events
# ARGV: run_id, now, workflow, by, action(pause|resume), lease_s
# -> {'ok', parked...} | {'finished'} | {'missing'} | {'noop'}
_LUA_PAUSE_RESUME = (
    _LUA_EMIT
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if redis.call('HGET', KEYS[1], 'finished_at') then return {'finished', status} end
if ARGV[5] == 'pause' then
  if redis.call('HGET', KEYS[1], 'paused') == '1' then return {'noop'} end
  redis.call('HSET', KEYS[1], 'paused', '1', 'paused_by', ARGV[4], 'paused_at', ARGV[2],
             'status_before_pause', status, 'status', 'paused')
  emit(KEYS[2], KEYS[3], {'type', 'workflow_paused', 'run_id', ARGV[1], 'workflow', ARGV[3],
       'by', ARGV[4], 'ts', ARGV[2]})
  return {'ok'}
end
if redis.call('HGET', KEYS[1], 'paused') ~= '1' then return {'noop'} end
check(tonumber(ARGV[6]), 'lease seconds')
local before = redis.call('HGET', KEYS[1], 'status_before_pause') or 'running'
redis.call('HSET', KEYS[1], 'paused', '0', 'status', before, 'resumed_by', ARGV[4],
           'resumed_at', ARGV[2])
emit(KEYS[2], KEYS[3], {'type', 'workflow_resumed', 'run_id', ARGV[1], 'workflow', ARGV[3],
     'by', ARGV[4], 'ts', ARGV[2]})
local out = {'ok'}
local parked = redis.call('LRANGE', KEYS[1] .. ':parked', 0, -1)
redis.call('DEL', KEYS[1] .. ':parked')
for _, m in ipairs(parked) do
  unpark(KEYS[1], m, ARGV[6])
  out[#out + 1] = m
end
return out
"""
)

# A gate on one step opens: approval given, or a decision to retry the failed step.
# KEYS: run, step, run_events, global_events
# ARGV: run_id, step_id, now, workflow, by, expected_status, event, extra_field, extra_value,
#       lease_s (the step is watched again, as its parked message is published),
#       secrets_json: values to mask from now on in this run (a JSON list, or '')
# -> {'ok', parked_sig} | {'wrong', status}
_LUA_OPEN = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if st ~= ARGV[6] then return {'wrong', st or 'missing'} end
local sig = redis.call('HGET', KEYS[2], 'parked_sig') or ''
check(sig == '' or tonumber(ARGV[10]), 'lease seconds')
local masked = nil
if ARGV[11] ~= '' then
  masked = cjson.decode(redis.call('HGET', KEYS[1], 'secret_overrides') or '[]')
  for _, v in ipairs(cjson.decode(ARGV[11])) do masked[#masked + 1] = v end
end
if masked and #masked > 0 then
  redis.call('HSET', KEYS[1], 'secret_overrides', cjson.encode(masked))
end
local run_status = redis.call('HGET', KEYS[1], 'status')
redis.call('HDEL', KEYS[2], 'parked_sig')
redis.call('HSET', KEYS[2], 'status', 'pending', 'deliveries', '0', ARGV[8], ARGV[9])
if ARGV[6] == 'awaiting_approval' then
  redis.call('HSET', KEYS[2], 'approved', '1', 'approved_by', ARGV[5], 'approved_at', ARGV[3])
end
if run_status == 'awaiting_decision' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
emit(KEYS[3], KEYS[4], {'type', ARGV[7], 'run_id', ARGV[1], 'workflow', ARGV[4],
     'step', ARGV[2], 'by', ARGV[5], 'ts', ARGV[3]})
if sig ~= '' then watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], ARGV[10], '') end
return {'ok', sig}
"""
)

# A step failed with on_failure: pause. Holder only (as FINISH); the step stops holding a
# max_active_steps slot. KEYS: run, step, lease, run_events, global_events
# ARGV: run_id, step_id, token, now, workflow, sig, exit_code, reason, stderr_json, history,
#       attempt  -> {1, parked message to publish or ''} | {-1} (superseded)
_LUA_AWAIT_DECISION = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
local mine, current = holds(KEYS[2], ARGV[3], ARGV[11])
if st ~= 'running' or not mine then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[5], ARGV[2], ARGV[11], 'awaiting_decision', ARGV[4],
          current)
  return {-1}
end
local lease = redis.call('GET', KEYS[3])
local paused = redis.call('HGET', KEYS[1], 'paused')
redis.call('HSET', KEYS[2], 'status', 'awaiting_decision', 'parked_sig', ARGV[6],
           'exit_code', ARGV[7], 'reason', ARGV[8], 'stderr_tail', ARGV[9],
           'deliveries', '0', 'waiting_since', ARGV[4])
redis.call('HDEL', KEYS[2], 'holder')
append_history(KEYS[2], ARGV[10])
if lease == ARGV[3] then redis.call('DEL', KEYS[3]) end
redis.call('ZREM', leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2])
if paused ~= '1' then
  redis.call('HSET', KEYS[1], 'status', 'awaiting_decision')
end
emit(KEYS[4], KEYS[5], {'type', 'step_awaiting_decision', 'run_id', ARGV[1],
     'workflow', ARGV[5], 'step', ARGV[2], 'exit_code', ARGV[7], 'reason', ARGV[8],
     'ts', ARGV[4]})
return {1, release_slot(KEYS[1], ARGV[2]) or ''}
"""
)

# Admission of a new run into its concurrency group.
# The run was recorded as 'queued'. KEYS: group active zset, group queue list, run
# ARGV: run_id, limit, on_conflict
# -> {'start'} | {'queued'} | {'skip'} | {'cancel', ids...} | {'corrupt', key}
# Every check comes before the first write: a group key of the wrong type (written by
# something else under our prefix) is reported, never half-applied.
_LUA_ADMIT = """
local t_active = redis.call('TYPE', KEYS[1])['ok']
if t_active ~= 'zset' and t_active ~= 'none' then return {'corrupt', KEYS[1]} end
local t_queue = redis.call('TYPE', KEYS[2])['ok']
if t_queue ~= 'list' and t_queue ~= 'none' then return {'corrupt', KEYS[2]} end
local limit = tonumber(ARGV[2])
if not limit then return {'corrupt', 'limit ' .. ARGV[2]} end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'pending')
  return {'start'}
end
if ARGV[3] == 'skip' then return {'skip'} end
if ARGV[3] == 'cancel_running' then
  local out = {'cancel'}
  for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do out[#out + 1] = r end
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return out
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return {'queued'}
"""


class Gates:
    """Operator-control transitions on top of a RunStore (same client, same prefix)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        r = store.r
        self._pause_resume = r.register_script(_LUA_PAUSE_RESUME)
        self._open = r.register_script(_LUA_OPEN)
        self._await = r.register_script(_LUA_AWAIT_DECISION)
        self._admit = r.register_script(_LUA_ADMIT)

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
        args = [
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

    def admit(self, run_id: str, group: str, limit: int, on_conflict: str) -> tuple[str, list]:
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
