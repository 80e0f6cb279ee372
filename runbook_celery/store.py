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
_LUA_EMIT = """
local function emit(run_events, global_events, fields)
  redis.call('XADD', run_events, 'MAXLEN', '~', RUN_EVENTS_MAXLEN, '*', unpack(fields))
  redis.call('XADD', global_events, 'MAXLEN', '~', GLOBAL_EVENTS_MAXLEN, '*', unpack(fields))
end
local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'skipped' or s == 'cancelled'
end
local admitted = {}
local function prefix_of(run_key)
  return string.match(run_key, '^(.*):run:[^:]+$')
end
-- a run of a concurrency group ended: free its slot and admit the next queued run.
-- Key names come from the run hash (keys.py digests the group's value); it runs after
-- the caller's first write, so nothing here may raise: a key of the wrong type (written
-- by someone else) or a bad limit leaves the group alone instead of failing halfway
local function release_group(run_key, run_id)
  local cg = redis.call('HMGET', run_key, 'cgroup_key', 'cgroup_limit')
  local active = cg[1]
  if not active then return end
  local queue = active .. ':queue'
  local limit = tonumber(cg[2] or '1') or 1
  local t_active = redis.call('TYPE', active)['ok']
  local t_queue = redis.call('TYPE', queue)['ok']
  if (t_active ~= 'zset' and t_active ~= 'none') or (t_queue ~= 'list' and t_queue ~= 'none')
  then
    return
  end
  local prefix = prefix_of(run_key)
  redis.call('ZREM', active, run_id)
  while redis.call('ZCARD', active) < limit do
    local nxt = redis.call('LPOP', queue)
    if not nxt then return end
    if redis.call('HGET', prefix .. ':run:' .. nxt, 'status') == 'queued' then
      redis.call('ZADD', active, 0, nxt)
      redis.call('HSET', prefix .. ':run:' .. nxt, 'status', 'pending')
      admitted[#admitted + 1] = nxt
    end
  end
end
local function leases_key(run_key)
  return string.match(run_key, '^(.*):run:[^:]+$') .. ':leases'
end
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function append_history(step_key, record)
  if record == '' then return end
  local h = redis.call('HGET', step_key, 'history')
  if not h or h == '[]' then h = '[' .. record .. ']'
  else h = string.sub(h, 1, -2) .. ',' .. record .. ']' end
  redis.call('HSET', step_key, 'history', h)
end
-- a JSON list we wrote, or {} when it is not one: helpers that run after a script's first
-- write must not raise (Lua does not roll back)
local function json_list(raw)
  if not raw then return {} end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return {}
end
-- a finished run lives for the retention period, then vanishes with its logs (key names
-- as in keys.py)
local function expire_run_keys(run_key, run_events)
  local ttl = tonumber(redis.call('HGET', run_key, 'retention') or '0') or 0
  if ttl <= 0 then return end
  local base = run_key
  redis.call('EXPIRE', run_key, ttl)
  redis.call('EXPIRE', run_events, ttl)
  local ids = json_list(redis.call('HGET', run_key, 'steps'))
  local i = 1
  while i <= #ids do
    local sid = tostring(ids[i])
    local inst = redis.call('HGET', base .. ':step:' .. sid, 'instances')
    if inst then
      for _, x in ipairs(json_list(inst)) do ids[#ids + 1] = x end
    end
    for _, part in ipairs({':step:', ':lease:', ':arrived:', ':logs:', ':ended:'}) do
      redis.call('EXPIRE', base .. part .. sid, ttl)
    end
    i = i + 1
  end
  redis.call('EXPIRE', base .. ':parked', ttl)
end
-- end the run when no step is left; returns the final status or ''
local function finalize(run_key, run_events, global_events, remaining, now, run_id, workflow)
  if remaining > 0 then return '' end
  if redis.call('HGET', run_key, 'finished_at') then return '' end
  local final = 'succeeded'
  local cancel = redis.call('HMGET', run_key, 'cancel_requested', 'cancel_reason', 'failures')
  if cancel[1] == '1' then
    if cancel[2] == 'timeout' then final = 'failed' else final = 'cancelled' end
  elseif (tonumber(cancel[3] or '0') or 0) > 0 then final = 'failed' end
  redis.call('HSET', run_key, 'status', final, 'finished_at', now)
  local ev = {'type', 'workflow_' .. final, 'run_id', run_id, 'workflow', workflow, 'ts', now}
  if cancel[1] == '1' and cancel[2] then
    ev[#ev+1] = 'reason'; ev[#ev+1] = cancel[2]
  end
  emit(run_events, global_events, ev)
  release_group(run_key, run_id)
  expire_run_keys(run_key, run_events)
  return final
end
"""

_LUA_EMIT = _LUA_EMIT.replace("GLOBAL_EVENTS_MAXLEN", str(GLOBAL_EVENTS_MAXLEN)).replace(
    "RUN_EVENTS_MAXLEN", str(RUN_EVENTS_MAXLEN)
)

# KEYS: run, step, lease, run_events, global_events, need_step_1..n, output_step_1..m
# ARGV: run_id, step_id, token, now, lease_s, max_deliveries, workflow, check_needs, n,
#       ignore_cancel, needs_approval, max_active
# -> {'start', attempt, outputs_1..n} | {'done', status} | {'busy', holder}
#    | {'blocked', need, status} | {'exhausted', attempts} | {'cancelled'}
_LUA_START = (
    _LUA_EMIT
    + """
local step = redis.call('HMGET', KEYS[2], 'status', 'approved', 'env_override')
local st = step[1]
if is_terminal(st) then return {'done', st} end
local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'cancel_reason',
                       'paused', 'active', 'mode')
local run_status = run[1]
if not run_status then return {'done', 'gone'} end
if ARGV[10] ~= '1' and (run_status == 'cancelled' or run[2] == '1') then
  return {'cancelled', run[3] or 'cancelled'}
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then return {'busy', holder} end
local n_needs = tonumber(ARGV[9])
if ARGV[8] == '1' then
  for i = 6, 5 + n_needs do
    local ns = redis.call('HMGET', KEYS[i], 'status', 'allowed_failure')
    if ns[1] ~= 'succeeded' and not ((ns[1] == 'failed' or ns[1] == 'skipped') and ns[2] == '1')
    then
      return {'blocked', i - 5, ns[1] or 'pending'}
    end
  end
end
if run[4] == '1' and ARGV[10] ~= '1' then
  return {'park', 'paused'}
end
if ARGV[11] == '1' and step[2] ~= '1' then
  return {'park', 'approval'}
end
local max_active = tonumber(ARGV[12])
if max_active > 0 and tonumber(run[5] or '0') >= max_active then
  return {'park', 'max_active'}
end
if max_active > 0 then redis.call('HINCRBY', KEYS[1], 'active', 1) end
local deliveries = redis.call('HINCRBY', KEYS[2], 'deliveries', 1)
if deliveries > tonumber(ARGV[6]) then
  return {'exhausted', deliveries - 1, redis.call('HGET', KEYS[2], 'attempts') or '0'}
end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[5])
redis.call('ZADD', leases_key(KEYS[1]), now_seconds() + tonumber(ARGV[5]),
           ARGV[1] .. '|' .. ARGV[2])
redis.call('HSET', KEYS[2], 'status', 'running', 'started_at', ARGV[4])
if run_status == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[4])
  emit(KEYS[4], KEYS[5], {'type', 'workflow_started', 'run_id', ARGV[1],
       'workflow', ARGV[7], 'ts', ARGV[4]})
end
emit(KEYS[4], KEYS[5], {'type', 'step_started', 'run_id', ARGV[1], 'workflow', ARGV[7],
     'step', ARGV[2], 'attempt', tostring(attempt), 'ts', ARGV[4]})
local out = {'start', attempt, step[3] or '', run[6] or ''}
for i = 6 + n_needs, #KEYS do
  out[#out + 1] = redis.call('HGET', KEYS[i], 'outputs') or '{}'
end
return out
"""
)

# KEYS: run, step, lease, run_events, global_events,
#       then n_skip step keys, then n_children arrived-set keys
# The run's mode decides, atomically with the transition: canvas applies the skips,
# dynamic the joins (the caller passes both, whichever mode it saw at the start).
# ARGV: run_id, step_id, token, now, status, exit_code, outputs_json, stderr_tail_json,
#       reason, allowed_failure, workflow, attempt, n_skip, skip_ids..., n_children,
#       (child_id, child_need_count)..., history_record_json
# -> {remaining, final_status_or_empty, ready_child_1, ...} | {'dup'}
_LUA_FINISH = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if is_terminal(st) then return {'dup', st} end
local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'mode')
if not run[1] then return {'dup', 'gone'} end
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
fields[#fields+1] = 'deliveries'; fields[#fields+1] = '0'
redis.call('HSET', KEYS[2], unpack(fields))
append_history(KEYS[2], ARGV[#ARGV])
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[3] or not holder then redis.call('DEL', KEYS[3]) end
-- the lease-index entry stays until the task has handed on (workerhooks: task_postrun)
local ev = {'type', 'step_' .. status, 'run_id', ARGV[1], 'workflow', ARGV[11],
            'step', ARGV[2], 'ts', ARGV[4]}
if ARGV[12] ~= '' then ev[#ev+1] = 'attempt'; ev[#ev+1] = ARGV[12] end
if ARGV[6] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[6] end
if ARGV[9] ~= '' then ev[#ev+1] = 'reason'; ev[#ev+1] = ARGV[9] end
emit(KEYS[4], KEYS[5], ev)
local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
if status == 'failed' and ARGV[10] ~= '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
-- the run's dispatch mode now, not when the step started: a canvas run failed over to
-- dynamic dispatch while this step ran (fail_over_to_dynamic) needs this step's join, and
-- Celery's canvas skips nothing after a failure once the run has failed over
local dynamic = run[3] == 'dynamic'
local n_skip = tonumber(ARGV[13])
local skip_status = 'skipped'
if run[2] == '1' then skip_status = 'cancelled' end
for i = 1, (dynamic and 0 or n_skip) do
  local key = KEYS[5 + i]
  local s = redis.call('HGET', key, 'status')
  if not is_terminal(s) and s ~= 'running' then
    local sid = ARGV[13 + i]
    redis.call('HSET', key, 'status', skip_status, 'finished_at', ARGV[4],
               'reason', 'needs ' .. ARGV[2] .. ' ' .. status)
    emit(KEYS[4], KEYS[5], {'type', 'step_' .. skip_status, 'run_id', ARGV[1],
         'workflow', ARGV[11], 'step', sid, 'ts', ARGV[4]})
    remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  end
end
local base = 13 + n_skip
local n_children = tonumber(ARGV[base + 1])
local out = {remaining, ''}
for i = 1, (dynamic and n_children or 0) do
  local child = ARGV[base + 2 * i]
  local need_count = tonumber(ARGV[base + 2 * i + 1])
  local key = KEYS[5 + n_skip + i]
  redis.call('SADD', key, ARGV[2])
  if redis.call('SCARD', key) >= need_count then out[#out + 1] = child end
end
out[2] = finalize(KEYS[1], KEYS[4], KEYS[5], remaining, ARGV[4], ARGV[1], ARGV[11])
for _, r in ipairs(admitted) do out[#out + 1] = '@' .. r end
return out
"""
)

# KEYS: run, step, lease, run_events, global_events
# ARGV: run_id, step_id, token, now, workflow, attempt, exit_code, reason, delay, history_json
_LUA_RETRY = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if is_terminal(st) then return 0 end
redis.call('HSET', KEYS[2], 'status', 'retrying', 'deliveries', '0')
append_history(KEYS[2], ARGV[10])
local holder = redis.call('GET', KEYS[3])
if holder == ARGV[3] or not holder then redis.call('DEL', KEYS[3]) end
redis.call('ZREM', leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2])
local ev = {'type', 'step_retrying', 'run_id', ARGV[1], 'workflow', ARGV[5], 'step', ARGV[2],
            'attempt', ARGV[6], 'reason', ARGV[8], 'delay', ARGV[9], 'ts', ARGV[4]}
if ARGV[7] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[7] end
emit(KEYS[4], KEYS[5], ev)
return 1
"""
)

# A step given back by a worker that is shutting down: pending again, attempt not counted.
# KEYS: run, step, lease, run_events, global_events   ARGV: run_id, step_id, token, now, workflow
_LUA_HANDBACK = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
if st ~= 'running' then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2])
redis.call('HINCRBY', KEYS[2], 'attempts', -1)
redis.call('HINCRBY', KEYS[2], 'deliveries', -1)
redis.call('HSET', KEYS[2], 'status', 'pending')
emit(KEYS[4], KEYS[5], {'type', 'step_handed_back', 'run_id', ARGV[1], 'workflow', ARGV[5],
     'step', ARGV[2], 'ts', ARGV[4]})
return 1
"""
)

# Cancel, step 1: the request itself, so that no step starts from now on (START checks it).
# KEYS: run, run_events, global_events   ARGV: run_id, now, workflow, reason
# -> {'missing'} | {'finished', status} | {'ok'}
_LUA_CANCEL_BEGIN = (
    _LUA_EMIT
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'cancel_requested')
if not run[1] then return {'missing'} end
if run[2] then return {'finished', run[1]} end
if run[3] == '1' then return {'ok'} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'cancel_reason', ARGV[4])
local event = {'type', 'workflow_cancelling', 'run_id', ARGV[1], 'workflow', ARGV[3],
               'reason', ARGV[4], 'ts', ARGV[2]}
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'cancelled_by', ARGV[5])
  event[#event + 1] = 'by'
  event[#event + 1] = ARGV[5]
end
emit(KEYS[2], KEYS[3], event)
return {'ok'}
"""
)

# Cancel, step 2, in chunks (a 10,000-instance run must not hold Redis in one script):
# pending and retrying steps of the chunk are cancelled; an instance joins its parent's
# set of ended instances. Reads first, then writes.
# KEYS: run, run_events, global_events, then per step: its key, the ended-instances set
#       of its fan-out parent (for a top-level step, its own: unused)
# ARGV: run_id, now, workflow, reason, step ids...
# -> {n_cancelled, final_status_or_empty, admitted run ids...} | {-1, ''} (no such run)
_LUA_CANCEL_STEPS = (
    _LUA_EMIT
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'remaining')
if not run[1] then return {-1, ''} end
if run[2] then return {0, run[1]} end
local remaining = tonumber(run[3] or '0') or 0
local todo = {}
for j = 5, #ARGV do
  local s = redis.call('HGET', KEYS[4 + 2 * (j - 5)], 'status')
  if s == 'pending' or s == 'retrying' then todo[#todo + 1] = j end
end
for _, j in ipairs(todo) do
  local key = KEYS[4 + 2 * (j - 5)]
  redis.call('HSET', key, 'status', 'cancelled', 'finished_at', ARGV[2], 'reason', ARGV[4])
  if string.find(ARGV[j], '[', 1, true) then redis.call('SADD', KEYS[5 + 2 * (j - 5)], ARGV[j]) end
  emit(KEYS[2], KEYS[3], {'type', 'step_cancelled', 'run_id', ARGV[1], 'workflow', ARGV[3],
       'step', ARGV[j], 'reason', ARGV[4], 'ts', ARGV[2]})
end
if #todo > 0 then remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -#todo) end
local out = {#todo, finalize(KEYS[1], KEYS[2], KEYS[3], remaining, ARGV[2], ARGV[1], ARGV[3])}
for _, r in ipairs(admitted) do out[#out + 1] = r end
return out
"""
)

# Cancel, step 3: a fanned-out step whose instances have all ended is cancelled now,
# without waiting for its fan-in (the instances still queued may take a while to drain).
# KEYS: run, run_events, global_events, then per fanned-out step: its key, its set of
#       ended instances   ARGV: run_id, now, workflow, reason, step ids...
# -> {n_cancelled, final_status_or_empty, admitted run ids...}
_LUA_CANCEL_FANNED = (
    _LUA_EMIT
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'remaining')
if not run[1] then return {-1, ''} end
if run[2] then return {0, run[1]} end
local remaining = tonumber(run[3] or '0') or 0
local todo = {}
for j = 5, #ARGV do
  local key = KEYS[4 + 2 * (j - 5)]
  local p = redis.call('HMGET', key, 'status', 'instance_count')
  local n = tonumber(p[2] or '')
  if p[1] == 'running' and n and redis.call('SCARD', KEYS[5 + 2 * (j - 5)]) >= n then
    todo[#todo + 1] = j
  end
end
for _, j in ipairs(todo) do
  redis.call('HSET', KEYS[4 + 2 * (j - 5)], 'status', 'cancelled', 'finished_at', ARGV[2],
             'reason', ARGV[4])
  emit(KEYS[2], KEYS[3], {'type', 'step_cancelled', 'run_id', ARGV[1], 'workflow', ARGV[3],
       'step', ARGV[j], 'reason', ARGV[4], 'ts', ARGV[2]})
end
if #todo > 0 then remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -#todo) end
local out = {#todo, finalize(KEYS[1], KEYS[2], KEYS[3], remaining, ARGV[2], ARGV[1], ARGV[3])}
for _, r in ipairs(admitted) do out[#out + 1] = r end
return out
"""
)
CANCEL_CHUNK = 500  # steps per cancel script: each holds Redis for a few milliseconds

# KEYS: lease index; ARGV: member, cutoff -> 1 when removed (its score was still <= cutoff)
_LUA_DROP_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# A canvas run continues by dynamic dispatch. KEYS: run, n step keys, n arrived-set keys
# (same order); ARGV: JSON list, per step, of its children's 1-based positions; step ids
# -> positions of the steps still pending whose needs have all finished
_LUA_FAIL_OVER = """
local function terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'skipped' or s == 'cancelled'
end
local kids = cjson.decode(ARGV[1])
local n = #kids
local status, pending_needs = {}, {}
for i = 1, n do
  status[i] = redis.call('HGET', KEYS[1 + i], 'status')
  pending_needs[i] = 0
end
redis.call('HSET', KEYS[1], 'mode', 'dynamic')
for i = 1, n do
  for _, c in ipairs(kids[i]) do
    if terminal(status[i]) then
      redis.call('SADD', KEYS[1 + n + c], ARGV[1 + i])
    else
      pending_needs[c] = pending_needs[c] + 1
    end
  end
end
local ready = {}
for i = 1, n do
  if (not status[i] or status[i] == 'pending') and pending_needs[i] == 0 then
    ready[#ready + 1] = i
  end
end
return ready
"""

# Fan-out: record the instances of a step, all at once and only once.
# KEYS: run, parent step, instance step keys...
# ARGV: instance ids json, window, then per instance its values json
_LUA_ADD_INSTANCES = """
if redis.call('HGET', KEYS[2], 'instances') then return 0 end
local n = #KEYS - 2
redis.call('HSET', KEYS[2], 'instances', ARGV[1], 'instance_count', n, 'fan_window', ARGV[2])
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'status', 'pending', 'attempts', '0', 'values', ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'remaining', n)
redis.call('HINCRBY', KEYS[1], 'instance_count', n)
return 1
"""

# An instance has ended (recorded, or a replay of it): it joins its parent's set of ended
# instances; its lane's next instance (index + window) is due unless the run is being
# cancelled; the fan-in is due once every instance has ended and the parent is open.
# Idempotent, so a redelivered instance repeats it safely (a duplicate message is a no-op).
# KEYS: run, parent step, ended set   ARGV: instance id, index
# -> {next_index or -1, 1 when the fan-in is due else 0}
_LUA_INSTANCE_ENDED = (
    _LUA_EMIT
    + """
local p = redis.call('HMGET', KEYS[2], 'instance_count', 'fan_window', 'status')
local n = tonumber(p[1] or '')
if not n then return {-1, 0} end
local window = tonumber(p[2] or '') or n
local i = tonumber(ARGV[2]) or n
local nxt = -1
if i + window < n and redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1' then
  nxt = i + window
end
redis.call('SADD', KEYS[3], ARGV[1])
local join = 0
if redis.call('SCARD', KEYS[3]) >= n and not is_terminal(p[3]) then join = 1 end
return {nxt, join}
"""
)


@dataclass(frozen=True)
class StartDecision:
    """What the step task should do, as decided atomically by the store."""

    action: str  # start | done | busy | blocked | exhausted | cancelled
    attempt: int = 0
    need_outputs: dict[str, dict[str, str]] | None = None
    status: str | None = None  # for done / blocked / park (the reason)
    blocked_by: str | None = None
    env: dict[str, str] | None = None  # environment set by an operator's retry decision
    mode: str | None = None  # the run's dispatch mode now (a canvas run may fail over)


@dataclass(frozen=True)
class FinishOutcome:
    duplicate: bool
    remaining: int = 0
    run_status: str | None = None  # set when this transition ended the run
    ready: tuple[str, ...] = ()
    admitted: tuple[str, ...] = ()  # queued runs of the same concurrency group now allowed


class RunStore:
    """Reads and writes runs; one instance per Redis client and key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "runbook", retention: int = 7 * 86400):
        self.r = client
        self.keys = Keys(prefix)
        self.retention = retention
        self.last_admitted: list[str] = []
        self._start = client.register_script(_LUA_START)
        self._finish = client.register_script(_LUA_FINISH)
        self._retry = client.register_script(_LUA_RETRY)
        self._handback = client.register_script(_LUA_HANDBACK)
        self._cancel_begin = client.register_script(_LUA_CANCEL_BEGIN)
        self._cancel_steps = client.register_script(_LUA_CANCEL_STEPS)
        self._cancel_fanned = client.register_script(_LUA_CANCEL_FANNED)
        self._add_instances = client.register_script(_LUA_ADD_INSTANCES)
        self._instance_ended = client.register_script(_LUA_INSTANCE_ENDED)
        self._fail_over = client.register_script(_LUA_FAIL_OVER)
        self._drop_expired = client.register_script(_LUA_DROP_EXPIRED)

    # -------------------------------------------------------------- create / read

    def create_run(
        self, run_id: str, snapshot: Mapping[str, Any], sha256: str, **extra: str
    ) -> None:
        """Record a new run and its pending steps in one transaction."""
        k = self.keys
        now = now_iso()
        step_ids = [s["id"] for s in snapshot["steps"]]
        reused = snapshot.get("reused") or {}
        run_fields = {
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
            **extra,
        }
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(k.run(run_id), mapping=run_fields)
            for sid in step_ids:
                fields: dict[str, Any] = {"status": StepStatus.PENDING.value, "attempts": 0}
                if sid in reused:
                    fields = {
                        "status": StepStatus.SUCCEEDED.value,
                        "attempts": 0,
                        "outputs": json.dumps(reused[sid]),
                        "reused": 1,
                        "reason": f"reused from run {extra.get('rerun_of', '?')}",
                    }
                pipe.hset(k.step(run_id, sid), mapping=fields)
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
        steps: dict[str, StepRecord] = {}
        for sid, raw in zip(step_ids, raw_steps, strict=True):
            h = _decode(raw)
            steps[sid] = StepRecord.from_hash(h)
            if h.get("instances"):  # a fanned-out step: its instances follow it
                ids = json.loads(h["instances"])
                for iid, ih in self.step_hashes(run_id, ids).items():
                    steps[iid] = StepRecord.from_hash(ih)
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
        ignore_cancel: bool = False,
        needs_approval: bool = False,
        max_active: int = 0,
    ) -> StartDecision:
        """Claim a step atomically; returns the outputs of ``output_steps`` when it starts."""
        k = self.keys
        keys = [
            *k.transition(run_id, step_id),
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
            int(ignore_cancel),
            int(needs_approval),
            max_active,
        ]
        res = [_s(x) for x in self._start(keys=keys, args=args)]
        action = res[0]
        if action == "start":
            outs = {n: json.loads(raw) for n, raw in zip(output_steps, res[4:], strict=True)}
            env = json.loads(res[2]) if res[2] else {}
            return StartDecision(
                "start", attempt=int(res[1]), need_outputs=outs, env=env, mode=res[3] or None
            )
        if action == "done":
            return StartDecision("done", status=res[1])
        if action == "blocked":
            return StartDecision("blocked", blocked_by=needs[int(res[1]) - 1], status=res[2])
        if action == "exhausted":
            return StartDecision("exhausted", attempt=int(res[2]), status=res[1])
        if action in ("cancelled", "park"):
            return StartDecision(action, status=res[1])
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
        outputs: Mapping[str, str] | list[Any] | None = None,
        stderr_tail: list[str] | None = None,
        reason: str | None = None,
        allowed_failure: bool = False,
        attempt: int | None = None,
        skip: Iterable[str] = (),
        children: Mapping[str, int] | None = None,
        history: Mapping[str, Any] | None = None,
    ) -> FinishOutcome:
        """Record a terminal step status; skip ``skip``; join ``children`` (dynamic mode)."""
        k = self.keys
        skip = list(skip)
        children = dict(children or {})
        keys = [
            *k.transition(run_id, step_id),
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
            "" if outputs is None else json.dumps(outputs),
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
        args.append(json.dumps(dict(history)) if history else "")
        res = [_s(x) for x in self._finish(keys=keys, args=args)]
        if res[0] == "dup":
            return FinishOutcome(duplicate=True)
        ready = tuple(r for r in res[2:] if not r.startswith("@"))
        admitted = tuple(r[1:] for r in res[2:] if r.startswith("@"))
        # a run that ended here had its keys' expiry set by the same script (finalize)
        return FinishOutcome(False, int(res[0]), res[1] or None, ready, admitted)

    def refresh_lease(self, run_id: str, step_id: str, token: str, seconds: int) -> bool:
        """Extend our lease; False when another attempt holds it (we were superseded)."""
        key = self.keys.lease(run_id, step_id)
        holder = self.r.get(key)
        if holder is not None and _s(holder) != token:
            return False
        expiry = _epoch() + seconds
        pipe = self.r.pipeline(transaction=True)
        pipe.set(key, token, ex=seconds)
        pipe.zadd(self.keys.leases, {f"{run_id}|{step_id}": expiry})
        pipe.execute()
        return True

    def expired_leases(
        self, grace: float = 0.0, before: float | None = None
    ) -> list[tuple[str, str]]:
        """Watched steps whose lease ran out: their worker is gone (or hung), or their
        message was dropped before the step started. ``before``: the cutoff (epoch)."""
        cutoff = (_epoch() if before is None else before) - grace
        members = self.r.zrangebyscore(self.keys.leases, "-inf", cutoff)
        out = []
        for m in members:
            run_id, _, step_id = _s(m).partition("|")
            out.append((run_id, step_id))
        return out

    def watch_steps(
        self, members: Iterable[str], seconds: float, *, only_existing: bool = False
    ) -> None:
        """Watch ``run|step`` entries for ``seconds`` more (the lease index, as a running
        step's lease does); ``only_existing``: extend entries, never create one."""
        mapping = {m: _epoch() + seconds for m in members}
        if mapping:
            self.r.zadd(self.keys.leases, mapping, xx=only_existing)

    def drop_lease_entry(
        self, run_id: str, step_id: str, expired_before: float | None = None
    ) -> None:
        """Stop watching a step; with ``expired_before``, only if nobody renewed the entry
        since it was found expired (a new delivery of the step watches it again)."""
        member = f"{run_id}|{step_id}"
        if expired_before is None:
            self.r.zrem(self.keys.leases, member)
            return
        self._drop_expired(keys=[self.keys.leases], args=[member, expired_before])

    def retry_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        workflow: str,
        attempt: int,
        exit_code: int | None,
        reason: str,
        delay: float,
        history: Mapping[str, Any],
    ) -> bool:
        """Record a failed attempt that will be retried; the step waits as ``retrying``."""
        k = self.keys
        keys = k.transition(run_id, step_id)
        args = [
            run_id,
            step_id,
            token,
            now_iso(),
            workflow,
            attempt,
            "" if exit_code is None else exit_code,
            reason,
            f"{delay:g}",
            json.dumps(dict(history)),
        ]
        return bool(self._retry(keys=keys, args=args))

    def handback_step(self, run_id: str, step_id: str, *, token: str, workflow: str) -> bool:
        """Give a running step back (worker shutting down): pending again, attempt uncounted."""
        k = self.keys
        keys = k.transition(run_id, step_id)
        return bool(self._handback(keys=keys, args=[run_id, step_id, token, now_iso(), workflow]))

    def cancel_run(
        self,
        run_id: str,
        reason: str = "cancelled",
        keep: Iterable[str] = (),
        by: str | None = None,
    ) -> tuple[int, str | None]:
        """Ask a run to stop: pending steps are cancelled now, running ones stop themselves.

        ``keep``: steps (and their instances) that still run after a cancel. A fanned-out
        step whose instances have all ended is cancelled now, not when its fan-in comes.
        ``by``: who asked (the run's ``cancelled_by`` and the ``by`` of its cancelling event).
        Returns (steps cancelled now, final run status if this ended the run).
        """
        k = self.keys
        run = _decode(self.r.hgetall(k.run(run_id)))
        if not run:
            raise RunNotFound(run_id)
        workflow = run.get("workflow", "")
        head = [k.run(run_id), k.run_events(run_id), k.global_events]
        args = [run_id, now_iso(), workflow, reason]
        begun = [_s(x) for x in self._cancel_begin(keys=head, args=[*args, by or ""])]
        if begun[0] == "missing":
            raise RunNotFound(run_id)
        self.last_admitted = []
        if begun[0] == "finished":
            return 0, begun[1]
        keep = set(keep)
        fanned = self._instances_by_parent(run_id, json.loads(run.get("steps", "[]")))
        ids = [s for s in json.loads(run.get("steps", "[]")) if s not in keep]
        for parent, instances in fanned.items():
            if parent not in keep:
                ids += instances
        cancelled, final = 0, ""
        for start in range(0, len(ids), CANCEL_CHUNK):
            chunk = ids[start : start + CANCEL_CHUNK]
            keys = list(head)
            for sid in chunk:
                owner = sid.rsplit("[", 1)[0]
                keys += [k.step(run_id, sid), k.ended_instances(run_id, owner)]
            res = [_s(x) for x in self._cancel_steps(keys=keys, args=[*args, *chunk])]
            if int(res[0]) < 0:
                raise RunNotFound(run_id)
            cancelled += int(res[0])
            final = res[1]
            self.last_admitted += res[2:]
            if final:
                break
        parents = [p for p in fanned if p not in keep]
        if parents and not final:
            keys = list(head)
            for parent in parents:
                keys += [k.step(run_id, parent), k.ended_instances(run_id, parent)]
            res = [_s(x) for x in self._cancel_fanned(keys=keys, args=[*args, *parents])]
            cancelled += max(0, int(res[0]))
            final = res[1]
            self.last_admitted += res[2:]
        # a run that ended here had its keys' expiry set by the same script (finalize)
        return cancelled, (final or None)

    def run_mode(self, run_id: str) -> str | None:
        raw = self.r.hget(self.keys.run(run_id), "mode")
        return _s(raw) if raw is not None else None

    def fail_over_to_dynamic(self, run_id: str, children: Mapping[str, list[str]]) -> list[str]:
        """A canvas run lost a message: continue it by dynamic dispatch from its record.

        Every finished step joins its children (as dynamic steps do), so the steps whose
        needs have all finished and that are still pending can be published; parts of the
        canvas still in flight are absorbed by the steps' claims. One script reads the
        statuses and switches the mode, so a step finishing at the same moment is either
        seen finished here (and joined) or sees the dynamic mode in its own transition
        (and joins itself), never neither.
        """
        k = self.keys
        steps = list(children)
        keys = [
            k.run(run_id),
            *(k.step(run_id, s) for s in steps),
            *(k.arrived(run_id, s) for s in steps),
        ]
        index = {s: i for i, s in enumerate(steps)}
        kids = [[index[c] + 1 for c in children[s]] for s in steps]
        res = self._fail_over(keys=keys, args=[json.dumps(kids), *steps])
        return [steps[int(i) - 1] for i in res]

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
        event = {
            "type": "workflow_skipped",
            "run_id": run_id,
            "workflow": run.get("workflow", ""),
            "reason": reason,
            "ts": now,
        }
        pipe.xadd(k.run_events(run_id), event)
        pipe.xadd(k.global_events, event, maxlen=GLOBAL_EVENTS_MAXLEN, approximate=True)
        pipe.execute()
        self.expire_run(run_id)

    def add_instances(
        self, run_id: str, parent: str, values: list[dict[str, Any]], window: int | None = None
    ) -> list[str]:
        """Record the instances of a fanned-out step (idempotent); returns their ids.

        ``window``: instances sent at once, each ending one sending the next of its lane
        (``instance_ended``); default all.
        """
        k = self.keys
        ids = [f"{parent}[{i}]" for i in range(len(values))]
        keys = [k.run(run_id), k.step(run_id, parent), *(k.step(run_id, i) for i in ids)]
        args = [json.dumps(ids), window or len(ids), *(json.dumps(v) for v in values)]
        self._add_instances(keys=keys, args=args)
        raw = self.r.hget(k.step(run_id, parent), "instances")
        return json.loads(raw) if raw else ids

    def instance_ended(self, run_id: str, instance_id: str) -> tuple[str | None, bool]:
        """An instance has ended: (the next instance of its lane to send, fan-in due?)."""
        parent, _, rest = instance_id.rpartition("[")
        index = rest.rstrip("]")
        k = self.keys
        keys = [k.run(run_id), k.step(run_id, parent), k.ended_instances(run_id, parent)]
        nxt, join = (int(x) for x in self._instance_ended(keys=keys, args=[instance_id, index]))
        return (f"{parent}[{nxt}]" if nxt >= 0 else None), bool(join)

    def instance_values(self, run_id: str, step_id: str) -> dict[str, Any]:
        raw = self.r.hget(self.keys.step(run_id, step_id), "values")
        return json.loads(raw) if raw else {}

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

    def cancel_requested(self, run_id: str) -> bool:
        return self.r.hget(self.keys.run(run_id), "cancel_requested") in (b"1", "1")

    def cancel_reason(self, run_id: str) -> str | None:
        raw = self.r.hget(self.keys.run(run_id), "cancel_reason")
        return _s(raw) if raw is not None else None

    def release_lease(self, run_id: str, step_id: str, token: str) -> None:
        """Give up our lease without finishing (a fan-out parent waits for its instances)."""
        key = self.keys.lease(run_id, step_id)
        if _s(self.r.get(key)) == token:
            self.r.delete(key)
        self.r.zrem(self.keys.leases, f"{run_id}|{step_id}")

    def rejoin(self, run_id: str, step_id: str, children: Mapping[str, int]) -> list[str]:
        """Redo a finished step's joins (idempotent); children ready and still pending."""
        if not children:
            return []
        pipe = self.r.pipeline(transaction=False)
        for child in children:
            pipe.sadd(self.keys.arrived(run_id, child), step_id)
            pipe.scard(self.keys.arrived(run_id, child))
            pipe.hget(self.keys.step(run_id, child), "status")
        res = pipe.execute()
        ready = []
        for i, (child, count) in enumerate(children.items()):
            card, status = res[3 * i + 1], _s(res[3 * i + 2])
            if card >= count and status in (None, "pending"):
                ready.append(child)
        return ready

    def expire_run(self, run_id: str) -> None:
        """Finished runs live for the retention period, then vanish with their logs."""
        steps = self.step_ids(run_id)
        steps += self._instance_ids(run_id, steps)
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
