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
-- An integer (a counter of a record, a count or a period passed in), ``default`` when
-- absent, nil when it is not one. Lua does not roll back: a script checks what could make
-- a later command fail (HINCRBY of a field that is no integer, SET EX of a bad period, a
-- key position out of range) before its first write, and ``check`` raises while nothing
-- has been written yet.
local function as_int(v, default)
  if v == nil or v == false or v == '' then return default end
  v = tostring(v)
  if string.match(v, '^%-?%d+$') then return tonumber(v) end
  return nil
end
local function check(ok, what)
  if not ok then error('runbook: refused before any write: ' .. what) end
end
local admitted = {}
local function prefix_of(run_key)
  return string.match(run_key, '^(.*):run:[^:]+$')
end
local function leases_key(run_key)
  return string.match(run_key, '^(.*):run:[^:]+$') .. ':leases'
end
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- watch a step (lease index): its entry must be renewed or dropped before Redis' clock
-- passes the score, else the reconciler looks for the step's message
local function watch(leases, member, seconds, flag)
  local score = now_seconds() + tonumber(seconds)
  if flag == '' then return redis.call('ZADD', leases, score, member) end
  return redis.call('ZADD', leases, flag, score, member)
end
local function run_id_of(run_key)
  return string.match(run_key, ':run:([^:]+)$')
end
-- fencing: the delivery whose token is the step's holder, at the step's current attempt
local function holds(step_key, token, attempt)
  local h = redis.call('HMGET', step_key, 'holder', 'attempts')
  return h[1] == token and (attempt == '' or h[2] == attempt), h[2] or '0'
end
-- a delivery that no longer holds its step wanted to record something: keep it as an event
local function discard(run_events, global_events, run_id, workflow, step, attempt, status, now,
                       current)
  emit(run_events, global_events, {'type', 'step_result_discarded', 'run_id', run_id,
       'workflow', workflow, 'step', step, 'attempt', attempt, 'status', status,
       'current_attempt', current, 'ts', now})
end
-- a parked message is taken to be published again: its step is pending and watched again
-- from here, so a publish lost with its worker is found
local function unpark(run_key, raw, lease_s)
  local ok, sig = pcall(cjson.decode, raw)
  local sid = ok and type(sig) == 'table' and type(sig['args']) == 'table' and sig['args'][2]
  if type(sid) == 'string' then
    local key = run_key .. ':step:' .. sid
    if redis.call('HGET', key, 'status') == 'waiting' then
      redis.call('HSET', key, 'status', 'pending')
    end
    watch(leases_key(run_key), run_id_of(run_key) .. '|' .. sid, lease_s, '')
  end
end
-- max_active_steps: the step stops executing and gives its slot back. When that frees a
-- slot the next parked message is taken (returned, for the caller to publish).
local function release_slot(run_key, step_id)
  local active = run_key .. ':active'
  if redis.call('SREM', active, step_id) == 0 then return nil end
  local cap = redis.call('HMGET', run_key, 'max_active', 'lease_s', 'paused')
  -- runs after the caller's first write: defaults rather than errors (START writes both)
  local max, lease_s = tonumber(cap[1] or '0') or 0, tonumber(cap[2] or '') or 30
  if max <= 0 or cap[3] == '1' then return nil end
  if redis.call('SCARD', active) >= max then return nil end
  local raw = redis.call('LPOP', run_key .. ':parked')
  if raw then unpark(run_key, raw, lease_s) end
  return raw
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
-- (every step is terminal here: nothing of the run is watched any more)
local function expire_run_keys(run_key, run_events)
  local ttl = tonumber(redis.call('HGET', run_key, 'retention') or '0') or 0
  local base = run_key
  local leases, run_id = leases_key(run_key), run_id_of(run_key)
  if ttl > 0 then
    redis.call('EXPIRE', run_key, ttl)
    redis.call('EXPIRE', run_events, ttl)
  end
  local ids = json_list(redis.call('HGET', run_key, 'steps'))
  local i = 1
  while i <= #ids do
    local sid = tostring(ids[i])
    local inst = redis.call('HGET', base .. ':step:' .. sid, 'instances')
    if inst then
      for _, x in ipairs(json_list(inst)) do ids[#ids + 1] = x end
    end
    redis.call('ZREM', leases, run_id .. '|' .. sid)
    if ttl > 0 then
      for _, part in ipairs({':step:', ':lease:', ':arrived:', ':logs:', ':ended:'}) do
        redis.call('EXPIRE', base .. part .. sid, ttl)
      end
    end
    i = i + 1
  end
  redis.call('DEL', base .. ':active')
  if ttl > 0 then redis.call('EXPIRE', base .. ':parked', ttl) end
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
    local q = redis.call('HMGET', prefix .. ':run:' .. nxt, 'status', 'status_before_pause')
    -- a queued run that was paused is still queued: admitted, it stays paused (its steps
    -- park when claimed) and resume gives it back 'pending'
    if q[1] == 'queued' or (q[1] == 'paused' and q[2] == 'queued') then
      redis.call('ZADD', active, 0, nxt)
      local field = q[1] == 'queued' and 'status' or 'status_before_pause'
      redis.call('HSET', prefix .. ':run:' .. nxt, field, 'pending')
      admitted[#admitted + 1] = nxt
      -- its first steps are watched from here, as the caller publishes the run: a caller
      -- lost before publishing leaves watches that run out, and the reconciler sends them
      local w = redis.call('HMGET', prefix .. ':run:' .. nxt, 'sources', 'watch_s')
      if w[1] and tonumber(w[2] or '') then
        for _, sid in ipairs(json_list(w[1])) do
          watch(prefix .. ':leases', nxt .. '|' .. tostring(sid), w[2], 'NX')
        end
      end
    end
  end
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

# CLAIM. The one place a delivery takes a step: it becomes the step's holder (fencing token:
# its token, at the step's next attempt number), takes its lease, and holds a
# max_active_steps slot (a set of step ids, so a redelivery holds the slot it had).
# A step that may not start now is parked in the same script when ARGV[13] carries the
# delivery's message (its message is kept in Redis and the delivery acknowledged).
# KEYS: run, step, lease, run_events, global_events, need_step_1..n, output_step_1..m
# ARGV: run_id, step_id, token, now, lease_s, max_deliveries, workflow, check_needs, n,
#       ignore_cancel, needs_approval, max_active, park_message ('' = do not park),
#       approval_prompt
# -> {'start', attempt, env_override, mode, outputs_1..n} | {'done', status} | {'unknown'}
#    | {'busy', holder} | {'blocked', need, status} | {'exhausted', deliveries, attempt}
#    | {'cancelled', reason} | {'park', gate} (no message given) | {'parked', gate}
_LUA_START = (
    _LUA_EMIT
    + """
local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'cancel_reason',
                       'paused', 'mode')
local run_status = run[1]
if not run_status then return {'done', 'gone'} end
local step = redis.call('HMGET', KEYS[2], 'status', 'approved', 'env_override', 'attempts',
                        'deliveries')
local st = step[1]
if not st then return {'unknown'} end  -- a step (or instance) the record does not have
if is_terminal(st) then return {'done', st} end
if ARGV[10] ~= '1' and (run_status == 'cancelled' or run[2] == '1') then
  return {'cancelled', run[3] or 'cancelled'}
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[3] then return {'busy', holder} end
local n_needs, max_active = as_int(ARGV[9]), as_int(ARGV[12])
local lease_s, max_deliveries = as_int(ARGV[5]), as_int(ARGV[6])
check(n_needs and max_active and max_deliveries and lease_s and lease_s > 0
      and #KEYS >= 5 + n_needs, 'claim arguments')
local attempts, deliveries = as_int(step[4], 0), as_int(step[5], 0)
check(attempts and deliveries, 'attempts/deliveries of step ' .. ARGV[2])
if ARGV[8] == '1' then
  for i = 6, 5 + n_needs do
    local ns = redis.call('HMGET', KEYS[i], 'status', 'allowed_failure')
    if ns[1] ~= 'succeeded' and not ((ns[1] == 'failed' or ns[1] == 'skipped') and ns[2] == '1')
    then
      return {'blocked', i - 5, ns[1] or 'pending'}
    end
  end
end
local active = KEYS[1] .. ':active'
local gate = nil
if run[4] == '1' and ARGV[10] ~= '1' then
  gate = 'paused'
elseif ARGV[11] == '1' and step[2] ~= '1' then
  gate = 'approval'
elseif max_active > 0 and redis.call('SISMEMBER', active, ARGV[2]) == 0
       and redis.call('SCARD', active) >= max_active then
  gate = 'max_active'
end
if gate then
  if ARGV[13] == '' then return {'park', gate} end
  redis.call('SREM', active, ARGV[2])
  redis.call('ZREM', leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2])
  if gate == 'approval' then
    redis.call('HSET', KEYS[2], 'status', 'awaiting_approval', 'parked_sig', ARGV[13],
               'approval_prompt', ARGV[14], 'waiting_since', ARGV[4])
    emit(KEYS[4], KEYS[5], {'type', 'step_awaiting_approval', 'run_id', ARGV[1],
         'workflow', ARGV[7], 'step', ARGV[2], 'prompt', ARGV[14], 'ts', ARGV[4]})
  else
    redis.call('RPUSH', KEYS[1] .. ':parked', ARGV[13])
    redis.call('HSET', KEYS[2], 'status', 'waiting')
    local why = gate == 'paused' and 'paused' or 'max_active_steps'
    emit(KEYS[4], KEYS[5], {'type', 'step_waiting', 'run_id', ARGV[1], 'workflow', ARGV[7],
         'step', ARGV[2], 'reason', why, 'ts', ARGV[4]})
  end
  return {'parked', gate}
end
deliveries = deliveries + 1
if deliveries > max_deliveries then
  -- this delivery records the step failed: it holds it for that (no lease, nothing runs)
  redis.call('HSET', KEYS[2], 'deliveries', deliveries, 'holder', ARGV[3])
  return {'exhausted', deliveries - 1, tostring(attempts)}
end
local out = {'start', attempts + 1, step[3] or '', run[5] or ''}
for i = 6 + n_needs, #KEYS do
  out[#out + 1] = redis.call('HGET', KEYS[i], 'outputs') or '{}'
end
local attempt = attempts + 1
redis.call('HSET', KEYS[2], 'deliveries', deliveries, 'attempts', attempt, 'status', 'running',
           'started_at', ARGV[4], 'holder', ARGV[3])
if max_active > 0 then
  redis.call('SADD', active, ARGV[2])
  redis.call('HSET', KEYS[1], 'max_active', max_active, 'lease_s', lease_s)
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', lease_s)
watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], lease_s, '')
-- a paused run that never started may still start a step: cleanup (always()) after a
-- cancel passes the pause gate; resume must then give it back 'running', not 'pending'
local paused_pending = run_status == 'paused'
  and redis.call('HGET', KEYS[1], 'status_before_pause') == 'pending'
if run_status == 'pending' or paused_pending then
  local field = paused_pending and 'status_before_pause' or 'status'
  redis.call('HSET', KEYS[1], field, 'running', 'started_at', ARGV[4])
  emit(KEYS[4], KEYS[5], {'type', 'workflow_started', 'run_id', ARGV[1],
       'workflow', ARGV[7], 'ts', ARGV[4]})
end
emit(KEYS[4], KEYS[5], {'type', 'step_started', 'run_id', ARGV[1], 'workflow', ARGV[7],
     'step', ARGV[2], 'attempt', tostring(attempt), 'ts', ARGV[4]})
return out
"""
)

# RENEW. Extends a lease only for the delivery that holds the step at its current attempt:
# it never takes a lease another delivery holds. A lease key that merely expired while no
# other delivery started the step is set again (the same attempt is still current).
# The lease is renewed with PEXPIRE, the script's first write: a full Redis (maxmemory,
# noeviction) refuses a script's first write when it may use memory (SET, ZADD) but not
# PEXPIRE, and once a script has written Redis lets it finish, so the watch's ZADD goes
# through too: a step keeps its lease and its watch while Redis is full. (Setting a lease
# key that expired is refused then, whole.)
# KEYS: step, lease, lease index, run   ARGV: token, attempt, lease_s, member
# -> {1, cancel_requested} | {0, status, current attempt} (this delivery was superseded)
_LUA_REFRESH = (
    _LUA_EMIT
    + """
local h = redis.call('HMGET', KEYS[1], 'status', 'holder', 'attempts')
local other = redis.call('GET', KEYS[2])
if h[1] ~= 'running' or h[2] ~= ARGV[1] or h[3] ~= ARGV[2] or (other and other ~= ARGV[1]) then
  return {0, h[1] or '', h[3] or ''}
end
local lease_s = as_int(ARGV[3])
check(lease_s and lease_s > 0, 'lease seconds')
local cancel = redis.call('HGET', KEYS[4], 'cancel_requested') or ''
if other then
  redis.call('PEXPIRE', KEYS[2], lease_s * 1000)
else
  redis.call('SET', KEYS[2], ARGV[1], 'EX', lease_s)
end
watch(KEYS[3], ARGV[4], lease_s, '')
return {1, cancel}
"""
)

# FINISH. Records a step's end, accepting it only from the delivery that holds the step
# (its token and attempt, ARGV[3] and ARGV[12]); a delivery that never started the step
# (skipped by its condition, operator decisions, approval timeout) may record it when no
# live lease is held by another. A refused write is kept as a step_result_discarded event.
# KEYS: run, step, lease, run_events, global_events,
#       then n_skip step keys, then n_children arrived-set keys
# The run's mode decides, atomically with the transition: canvas applies the skips,
# dynamic the joins (the caller passes both, whichever mode it saw at the start).
# Finished needs are recorded in their children's arrived sets in both modes (a canvas
# run watches, and may fail over to, its ready steps by them).
# ARGV: run_id, step_id, token, now, status, exit_code, outputs_json, stderr_tail_json,
#       reason, allowed_failure, workflow, attempt, n_skip, skip_ids..., n_children,
#       (child_id, child_need_count)..., lease_s, history_record_json
# Dynamic mode: the children this makes ready (and still pending) are watched from here,
# for lease_s ('' = watch nothing), as the caller publishes them.
# -> {remaining, final_status_or_empty, ready_child..., '@'admitted_run..., '!'message...}
#    | {'dup', status} | {'superseded'}
_LUA_FINISH = (
    _LUA_EMIT
    + """
local h = redis.call('HMGET', KEYS[2], 'status', 'holder', 'attempts', 'finished_by',
                     'started_at')
local st = h[1]
local started = ARGV[12] ~= ''
if is_terminal(st) then
  if started and h[4] ~= ARGV[3] then  -- finished by another delivery meanwhile
    discard(KEYS[4], KEYS[5], ARGV[1], ARGV[11], ARGV[2], ARGV[12], ARGV[5], ARGV[4],
            h[3] or '')
    return {'superseded'}
  end
  return {'dup', st}
end
local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'mode', 'remaining',
                       'failures')
if not run[1] then return {'dup', 'gone'} end
if not st then return {'dup', 'unknown'} end
local holder = h[2] or ''
local lease = redis.call('GET', KEYS[3])
if (started and (holder ~= ARGV[3] or h[3] ~= ARGV[12]))
   or (not started and holder ~= '' and lease and lease ~= ARGV[3]) then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[11], ARGV[2], ARGV[12], ARGV[5], ARGV[4], h[3] or '')
  return {'superseded'}
end
-- Everything below is read and checked before the first write.
local status = ARGV[5]
local remaining, failures = as_int(run[4], 0), as_int(run[5], 0)
check(remaining and failures, 'remaining/failures of the run')
local n_skip = as_int(ARGV[13])
check(n_skip and n_skip >= 0, 'skip count')
local base = 13 + n_skip
local n_children = as_int(ARGV[base + 1])
check(n_children and n_children >= 0 and #ARGV == base + 2 * n_children + 3
      and #KEYS == 5 + n_skip + n_children, 'finish arguments')
local watch_s = ARGV[#ARGV - 1]
check(watch_s == '' or tonumber(watch_s), 'lease seconds')
-- the run's dispatch mode now, not when the step started: a canvas run failed over to
-- dynamic dispatch while this step ran (fail_over_to_dynamic) needs this step's join, and
-- Celery's canvas skips nothing after a failure once the run has failed over
local dynamic = run[3] == 'dynamic'
local skip_status = 'skipped'
if run[2] == '1' then skip_status = 'cancelled' end
local skips = {}
for i = 1, (dynamic and 0 or n_skip) do
  local sk = redis.call('HGET', KEYS[5 + i], 'status')
  if not is_terminal(sk) and sk ~= 'running' then skips[#skips + 1] = i end
end
-- joins: each child's arrived set as it will be once this step is in it
local ready, watched = {}, {}
for i = 1, n_children do
  local key = KEYS[5 + n_skip + i]
  local need_count = as_int(ARGV[base + 2 * i + 1])
  check(need_count, 'need count')
  local count = redis.call('SCARD', key) + 1 - redis.call('SISMEMBER', key, ARGV[2])
  if dynamic and count >= need_count then
    local child = ARGV[base + 2 * i]
    ready[#ready + 1] = child
    if watch_s ~= '' and redis.call('HGET', KEYS[1] .. ':step:' .. child, 'status')
                         == 'pending' then
      watched[#watched + 1] = child
    end
  end
end
-- writes
local fields = {'status', status, 'finished_at', ARGV[4], 'finished_by', ARGV[3]}
if ARGV[6] ~= '' then fields[#fields+1] = 'exit_code'; fields[#fields+1] = ARGV[6] end
if ARGV[7] ~= '' then fields[#fields+1] = 'outputs'; fields[#fields+1] = ARGV[7] end
if ARGV[8] ~= '' then fields[#fields+1] = 'stderr_tail'; fields[#fields+1] = ARGV[8] end
if ARGV[9] ~= '' then fields[#fields+1] = 'reason'; fields[#fields+1] = ARGV[9] end
if ARGV[10] == '1' then fields[#fields+1] = 'allowed_failure'; fields[#fields+1] = '1' end
if st == 'pending' then
  -- never started (skipped/cancelled/exhausted): give it a start time for the record
  fields[#fields+1] = 'started_at'
  fields[#fields+1] = h[5] or ARGV[4]
end
fields[#fields+1] = 'deliveries'; fields[#fields+1] = '0'
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('HDEL', KEYS[2], 'holder')
append_history(KEYS[2], ARGV[#ARGV])
if lease == ARGV[3] or not lease then redis.call('DEL', KEYS[3]) end
-- the lease-index entry stays until the task has handed on (hand_on)
local ev = {'type', 'step_' .. status, 'run_id', ARGV[1], 'workflow', ARGV[11],
            'step', ARGV[2], 'ts', ARGV[4]}
if ARGV[12] ~= '' then ev[#ev+1] = 'attempt'; ev[#ev+1] = ARGV[12] end
if ARGV[6] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[6] end
if ARGV[9] ~= '' then ev[#ev+1] = 'reason'; ev[#ev+1] = ARGV[9] end
emit(KEYS[4], KEYS[5], ev)
remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1 - #skips)
if status == 'failed' and ARGV[10] ~= '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
for _, i in ipairs(skips) do
  redis.call('HSET', KEYS[5 + i], 'status', skip_status, 'finished_at', ARGV[4],
             'reason', 'needs ' .. ARGV[2] .. ' ' .. status)
  emit(KEYS[4], KEYS[5], {'type', 'step_' .. skip_status, 'run_id', ARGV[1],
       'workflow', ARGV[11], 'step', ARGV[13 + i], 'ts', ARGV[4]})
end
for i = 1, n_children do redis.call('SADD', KEYS[5 + n_skip + i], ARGV[2]) end
for _, child in ipairs(watched) do
  watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. child, watch_s, 'NX')
end
local out = {remaining, ''}
for _, child in ipairs(ready) do out[#out + 1] = child end
local unparked = release_slot(KEYS[1], ARGV[2])
out[2] = finalize(KEYS[1], KEYS[4], KEYS[5], remaining, ARGV[4], ARGV[1], ARGV[11])
for _, r in ipairs(admitted) do out[#out + 1] = '@' .. r end
if unparked then out[#out + 1] = '!' .. unparked end
return out
"""
)

# RETRY. A failed attempt that will run again: the step waits as ``retrying``; it stays
# watched (the retry's message may be lost like any other). Holder only, as FINISH.
# KEYS: run, step, lease, run_events, global_events
# ARGV: run_id, step_id, token, now, workflow, attempt, exit_code, reason, delay,
#       history_json, lease_s
# -> {1, parked message to publish or ''} | {0} (already finished) | {-1} (superseded)
_LUA_RETRY = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
local mine, current = holds(KEYS[2], ARGV[3], ARGV[6])
if not mine or st ~= 'running' then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[5], ARGV[2], ARGV[6], 'retrying', ARGV[4], current)
  return {-1}
end
check(tonumber(ARGV[11]), 'lease seconds')
local lease = redis.call('GET', KEYS[3])
redis.call('HSET', KEYS[2], 'status', 'retrying', 'deliveries', '0')
redis.call('HDEL', KEYS[2], 'holder')
append_history(KEYS[2], ARGV[10])
if lease == ARGV[3] or not lease then redis.call('DEL', KEYS[3]) end
watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], ARGV[11], '')
local ev = {'type', 'step_retrying', 'run_id', ARGV[1], 'workflow', ARGV[5], 'step', ARGV[2],
            'attempt', ARGV[6], 'reason', ARGV[8], 'delay', ARGV[9], 'ts', ARGV[4]}
if ARGV[7] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[7] end
emit(KEYS[4], KEYS[5], ev)
return {1, release_slot(KEYS[1], ARGV[2]) or ''}
"""
)

# HANDBACK. A delivery gives its step back without a result (its worker is shutting down,
# or it stopped the step itself after losing its lease): pending again, attempt not
# counted, still watched. Holder only, as FINISH.
# KEYS: run, step, lease, run_events, global_events
# ARGV: run_id, step_id, token, now, workflow, attempt, reason, lease_s
# -> {1, parked message to publish or ''} | {-1} (superseded)
_LUA_HANDBACK = (
    _LUA_EMIT
    + """
local st = redis.call('HGET', KEYS[2], 'status')
local mine, current = holds(KEYS[2], ARGV[3], ARGV[6])
if st ~= 'running' or not mine then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[5], ARGV[2], ARGV[6], 'handed_back', ARGV[4],
          current)
  return {-1}
end
local counts = redis.call('HMGET', KEYS[2], 'attempts', 'deliveries')
local attempts, deliveries = as_int(counts[1], 0), as_int(counts[2], 0)
check(attempts and deliveries, 'attempts/deliveries of step ' .. ARGV[2])
check(tonumber(ARGV[8]), 'lease seconds')
local lease = redis.call('GET', KEYS[3])
if lease == ARGV[3] or not lease then redis.call('DEL', KEYS[3]) end
watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], ARGV[8], '')
redis.call('HSET', KEYS[2], 'status', 'pending', 'attempts', attempts - 1,
           'deliveries', deliveries - 1)
redis.call('HDEL', KEYS[2], 'holder')
emit(KEYS[4], KEYS[5], {'type', 'step_handed_back', 'run_id', ARGV[1], 'workflow', ARGV[5],
     'step', ARGV[2], 'attempt', ARGV[6], 'reason', ARGV[7], 'ts', ARGV[4]})
return {1, release_slot(KEYS[1], ARGV[2]) or ''}
"""
)

# RELEASE. A fanned-out step's delivery lets go of the step while its instances run (the
# fan-in task records it): no holder, no lease, no slot. Its lease-index entry stays until
# the delivery has published the instances (hand_on). Holder only.
# KEYS: run, step, lease   ARGV: token, attempt, step_id -> {1, message or ''} | {0}
_LUA_RELEASE = (
    _LUA_EMIT
    + """
if not holds(KEYS[2], ARGV[1], ARGV[2]) then return {0} end
local lease = redis.call('GET', KEYS[3])
redis.call('HDEL', KEYS[2], 'holder')
if lease == ARGV[1] then redis.call('DEL', KEYS[3]) end
return {1, release_slot(KEYS[1], ARGV[3]) or ''}
"""
)

# HAND ON. A step's task has handed on (published what follows it, or stored the result
# Celery hands on from): stop watching it, and watch each successor that is now ready and
# still pending, so that a message lost between here and that step's claim (a worker
# killed between popping it from its queue and recording it unacknowledged, or before it
# wrote its first watch) is found by the reconciler. Steps whose transitions this task
# made for them hand on with it (a fanned-out step joined inline by its last instance).
# KEYS (from k): lease index, then per successor: step key, arrived-set key
# ARGV (from a): member, lease_s, n, then per successor: member, need count (0: no join),
#                then m, then m members that hand on with this one
# Reads first (``ready_successors``), then the writes (``hand_on``).
_LUA_HAND_ON_FN = """
local function ready_successors(k, a)
  check(tonumber(ARGV[a + 1]), 'lease seconds')
  local n = tonumber(ARGV[a + 2])
  local ready = {}
  for i = 1, n do
    local need = tonumber(ARGV[a + 2 + 2 * i])
    if redis.call('HGET', KEYS[k - 1 + 2 * i], 'status') == 'pending'
       and (need == 0 or redis.call('SCARD', KEYS[k + 2 * i]) >= need) then
      ready[#ready + 1] = ARGV[a + 1 + 2 * i]
    end
  end
  return ready
end
local function hand_on(k, a, ready)
  local n = tonumber(ARGV[a + 2])
  redis.call('ZREM', KEYS[k], ARGV[a])
  for j = 1, tonumber(ARGV[a + 3 + 2 * n]) do
    redis.call('ZREM', KEYS[k], ARGV[a + 3 + 2 * n + j])
  end
  for _, member in ipairs(ready) do watch(KEYS[k], member, ARGV[a + 1], 'NX') end
end
"""
_LUA_HAND_ON = _LUA_EMIT + _LUA_HAND_ON_FN + "hand_on(1, 1, ready_successors(1, 1))\nreturn 1\n"

# The same, together with Celery's stored result of the step task (one round trip, and
# the entry ends exactly when the result Celery hands on from exists).
# KEYS: result key, then as HAND ON   ARGV: value, expires (0: none), then as HAND ON
_LUA_STORE_RESULT = (
    _LUA_EMIT
    + _LUA_HAND_ON_FN
    + """
local ready = ready_successors(2, 3)
local expires = tonumber(ARGV[2]) or 0
if expires > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
hand_on(2, 3, ready)
return 1
"""
)

# WATCH (the lease index, by Redis' clock). KEYS: lease index
# ARGV: seconds, flag ('' | 'NX' | 'XX'), members...
_LUA_WATCH = (
    _LUA_EMIT
    + """
for i = 3, #ARGV do watch(KEYS[1], ARGV[i], ARGV[1], ARGV[2]) end
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
# steps of the chunk that are pending, retrying or parked are cancelled; an instance joins
# its parent's set of ended instances. Reads first, then writes.
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
local remaining = as_int(run[3], 0)
check(remaining, 'remaining of the run')
local todo = {}
for j = 5, #ARGV do
  local s = redis.call('HGET', KEYS[4 + 2 * (j - 5)], 'status')
  -- not started yet, or parked by a gate (paused, max_active, approval, decision): no copy
  -- of the step is live, so it is cancelled now; a running step stops itself
  if s == 'pending' or s == 'retrying' or s == 'waiting' or s == 'awaiting_approval'
     or s == 'awaiting_decision' then
    todo[#todo + 1] = j
  end
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
local remaining = as_int(run[3], 0)
check(remaining, 'remaining of the run')
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
# (ARGV ends with lease_s: the steps returned are watched from here, as their messages
# are published by the caller and may be lost like any other)
_LUA_FAIL_OVER = (
    _LUA_EMIT
    + """
local terminal = is_terminal
local ok, kids = pcall(cjson.decode, ARGV[1])
check(ok and type(kids) == 'table', 'children')
local n = #kids
check(#KEYS == 1 + 2 * n and #ARGV == n + 2 and tonumber(ARGV[n + 2]), 'fail-over arguments')
for i = 1, n do
  check(type(kids[i]) == 'table', 'children of step ' .. i)
  for _, c in ipairs(kids[i]) do
    check(type(c) == 'number' and c == math.floor(c) and c >= 1 and c <= n, 'child position')
  end
end
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
    watch(leases_key(KEYS[1]), run_id_of(KEYS[1]) .. '|' .. ARGV[1 + i], ARGV[n + 2], '')
  end
end
return ready
"""
)

# Fan-out: record the instances of a step, all at once and only once. The first window
# of them is due now (sent by the caller): watched from here, unless the run is being
# cancelled (the caller cancels them instead of sending them).
# KEYS: run, parent step, instance step keys...
# ARGV: instance ids json, window, then per instance its values json, then lease_s
#       ('' = watch nothing: a broker whose messages cannot be looked for)
_LUA_ADD_INSTANCES = (
    _LUA_EMIT
    + """
if redis.call('HGET', KEYS[2], 'instances') then return 0 end
local n = #KEYS - 2
local ids = cjson.decode(ARGV[1])
local window = as_int(ARGV[2])
local lease_s = ARGV[#ARGV]
check(type(ids) == 'table' and #ids == n and window and #ARGV == n + 3
      and (lease_s == '' or tonumber(lease_s)), 'fan-out arguments')
local run = redis.call('HMGET', KEYS[1], 'cancel_requested', 'remaining', 'instance_count')
check(as_int(run[2], 0) and as_int(run[3], 0), 'remaining/instance_count of the run')
local watching = lease_s ~= '' and run[1] ~= '1'
redis.call('HSET', KEYS[2], 'instances', ARGV[1], 'instance_count', n, 'fan_window', window)
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'status', 'pending', 'attempts', '0', 'values', ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'remaining', n)
redis.call('HINCRBY', KEYS[1], 'instance_count', n)
if watching then
  local leases, run_id = leases_key(KEYS[1]), run_id_of(KEYS[1])
  for i = 1, math.min(window, n) do watch(leases, run_id .. '|' .. ids[i], lease_s, 'NX') end
end
return 1
"""
)

# An instance has ended (recorded, or a replay of it): it joins its parent's set of ended
# instances; its lane's next instance (index + window) is due unless the run is being
# cancelled; the fan-in is due once every instance has ended and the parent is open.
# What becomes due is watched in this same transition (the next instance, still pending;
# the parent, whose join the caller runs): a worker lost before sending or joining leaves
# a watch that runs out, and the reconciler sends the instance or the fan-in again.
# Idempotent, so a redelivered instance repeats it safely (a duplicate message is a no-op).
# KEYS: run, parent step, ended set
# ARGV: instance id, index, parent id, lease_s ('' = watch nothing)
# -> {next_index or -1 (only while that instance is pending), 1 when the fan-in is due}
_LUA_INSTANCE_ENDED = (
    _LUA_EMIT
    + """
local p = redis.call('HMGET', KEYS[2], 'instance_count', 'fan_window', 'status')
local n = tonumber(p[1] or '')
if not n then return {-1, 0} end
local window = tonumber(p[2] or '') or n
local i = tonumber(ARGV[2]) or n
local lease_s = ARGV[4]
check(lease_s == '' or tonumber(lease_s), 'lease seconds')
local nxt = -1
if i + window < n and redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1'
   and redis.call('HGET', KEYS[2] .. '[' .. (i + window) .. ']', 'status') == 'pending' then
  nxt = i + window
end
local count = redis.call('SCARD', KEYS[3]) + (1 - redis.call('SISMEMBER', KEYS[3], ARGV[1]))
local join = 0
if count >= n and not is_terminal(p[3]) then join = 1 end
redis.call('SADD', KEYS[3], ARGV[1])
if lease_s ~= '' then
  local leases, run_id = leases_key(KEYS[1]), run_id_of(KEYS[1])
  if nxt >= 0 then watch(leases, run_id .. '|' .. ARGV[3] .. '[' .. nxt .. ']', lease_s, 'NX') end
  if join == 1 then watch(leases, run_id .. '|' .. ARGV[3], lease_s, 'NX') end
end
return {nxt, join}
"""
)


@dataclass(frozen=True)
class StartDecision:
    """What the step task should do, as decided atomically by the store."""

    action: str  # start | done | unknown | busy | blocked | exhausted | cancelled | park(ed)
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
    superseded: bool = False  # refused: another delivery holds (or finished) the step
    unparked: tuple[dict[str, Any], ...] = ()  # parked messages a freed slot lets go


@dataclass(frozen=True)
class Outcome:
    """A holder-only transition (retry, hand-back, release): done, or refused."""

    done: bool
    superseded: bool = False
    unparked: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_reply(cls, res: list[Any]) -> Outcome:
        code = int(res[0])
        msg = _s(res[1]) if len(res) > 1 else ""
        return cls(code == 1, code < 0, (json.loads(msg),) if msg else ())


@dataclass(frozen=True)
class Successor:
    """A step that may become ready when another hands on (see RunStore.hand_on)."""

    step: str
    # how many needs it joins on (its arrived set); 0: none to check
    needs: int


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
        self._refresh = client.register_script(_LUA_REFRESH)
        self._release = client.register_script(_LUA_RELEASE)
        self._hand_on = client.register_script(_LUA_HAND_ON)
        self._store_result = client.register_script(_LUA_STORE_RESULT)
        self._watch = client.register_script(_LUA_WATCH)

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
        park_message: Mapping[str, Any] | None = None,
        approval_prompt: str = "",
    ) -> StartDecision:
        """CLAIM: take the step (holder ``token``, a new attempt, a lease, a slot) or say why not.

        Returns the outputs of ``output_steps`` when it starts. When a gate says "not now"
        (paused, approval, max_active_steps), the decision is ``park``; called again with
        ``park_message`` (the delivery's message), the step is parked in the same
        transition (``parked``), or starts if the gate opened meanwhile.
        """
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
            json.dumps(dict(park_message)) if park_message is not None else "",
            approval_prompt,
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
        if action in ("cancelled", "park", "parked"):
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
        watch_seconds: float | None = None,
    ) -> FinishOutcome:
        """FINISH: record a terminal status; skip ``skip``; join ``children`` (dynamic mode).

        With ``attempt`` (the delivery started the step), accepted only while ``token``
        holds the step at that attempt; without, only while no other delivery holds a live
        lease on it. A refused write is recorded as a ``step_result_discarded`` event and
        comes back as ``superseded``. ``watch_seconds``: the children this makes ready are
        watched from here (recovery.py), as the caller publishes them.
        """
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
        args.append("" if watch_seconds is None else watch_seconds)
        args.append(json.dumps(dict(history)) if history else "")
        res = [_s(x) for x in self._finish(keys=keys, args=args)]
        if res[0] == "superseded":
            return FinishOutcome(duplicate=False, superseded=True)
        if res[0] == "dup":
            return FinishOutcome(duplicate=True)
        tail = res[2:]
        ready = tuple(r for r in tail if r[:1] not in ("@", "!"))
        admitted = tuple(r[1:] for r in tail if r.startswith("@"))
        unparked = tuple(json.loads(r[1:]) for r in tail if r.startswith("!"))
        # a run that ended here had its keys' expiry set by the same script (finalize)
        return FinishOutcome(False, int(res[0]), res[1] or None, ready, admitted, unparked=unparked)

    def refresh_lease(
        self, run_id: str, step_id: str, token: str, attempt: int, seconds: int
    ) -> tuple[bool, bool]:
        """RENEW: extend our lease; returns (still the holder?, cancel requested?).

        A compare-and-set on (token, attempt): False once another delivery has started the
        step (or it ended), and then this delivery must stop its step and record nothing.
        """
        k = self.keys
        res = self._refresh(
            keys=[k.step(run_id, step_id), k.lease(run_id, step_id), k.leases, k.run(run_id)],
            args=[token, attempt, seconds, f"{run_id}|{step_id}"],
        )
        return int(res[0]) == 1, _s(res[1]) == "1"

    def expired_leases(
        self, grace: float = 0.0, before: float | None = None
    ) -> list[tuple[str, str]]:
        """Watched steps whose lease ran out: their worker is gone (or hung), or their
        message was lost before the step started. ``before``: the cutoff (epoch seconds,
        by Redis' clock, see ``server_time``)."""
        cutoff = (self.server_time() if before is None else before) - grace
        members = self.r.zrangebyscore(self.keys.leases, "-inf", cutoff)
        out = []
        for m in members:
            run_id, _, step_id = _s(m).partition("|")
            out.append((run_id, step_id))
        return out

    def server_time(self) -> float:
        """Redis' clock (epoch seconds): leases and watches are scored by it."""
        sec, usec = self.r.time()
        return float(sec) + usec / 1_000_000

    def watch_steps(
        self, members: Iterable[str], seconds: float, *, only_existing: bool = False
    ) -> None:
        """Watch ``run|step`` entries for ``seconds`` more (the lease index, as a running
        step's lease does); ``only_existing``: extend entries, never create one."""
        members = list(members)
        if members:
            flag = "XX" if only_existing else ""
            self._watch(keys=[self.keys.leases], args=[seconds, flag, *members])

    def hand_on(
        self,
        run_id: str,
        step_id: str,
        successors: Iterable[Successor],
        seconds: float,
        result: tuple[str, Any, int] | None = None,
        ended: Iterable[str] = (),
    ) -> None:
        """HAND ON: stop watching a step that has handed on; watch its ready successors.

        ``result``: (key, value, expires) of the Celery result to store in the same script.
        ``ended``: steps of the same run that hand on with this one (their transitions
        were made by this step's task: a fanned-out step joined by its last instance).
        """
        k = self.keys
        succ = list(successors)
        also = [f"{run_id}|{s}" for s in ended]
        keys = [k.leases]
        args: list[Any] = [f"{run_id}|{step_id}", seconds, len(succ)]
        for s in succ:
            keys += [k.step(run_id, s.step), k.arrived(run_id, s.step)]
            args += [f"{run_id}|{s.step}", s.needs]
        args += [len(also), *also]
        if result is None:
            self._hand_on(keys=keys, args=args)
            return
        key, value, expires = result
        self._store_result(keys=[key, *keys], args=[value, expires or 0, *args])

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
        lease_seconds: float,
    ) -> Outcome:
        """RETRY: a failed attempt will run again; the step waits as ``retrying``."""
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
            lease_seconds,
        ]
        return Outcome.from_reply(self._retry(keys=keys, args=args))

    def handback_step(
        self,
        run_id: str,
        step_id: str,
        *,
        token: str,
        workflow: str,
        attempt: int,
        reason: str,
        lease_seconds: float,
    ) -> Outcome:
        """HANDBACK: give a running step back without a result: pending again, attempt
        uncounted (worker shutting down, or the delivery lost its lease and stopped)."""
        k = self.keys
        keys = k.transition(run_id, step_id)
        args = [run_id, step_id, token, now_iso(), workflow, attempt, reason, lease_seconds]
        return Outcome.from_reply(self._handback(keys=keys, args=args))

    def release_step(self, run_id: str, step_id: str, token: str, attempt: int) -> Outcome:
        """RELEASE: a fanned-out step lets go (no holder, lease or slot) while its
        instances run; the fan-in task records it."""
        k = self.keys
        keys = [k.run(run_id), k.step(run_id, step_id), k.lease(run_id, step_id)]
        return Outcome.from_reply(self._release(keys=keys, args=[token, attempt, step_id]))

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

    def fail_over_to_dynamic(
        self, run_id: str, children: Mapping[str, list[str]], lease_seconds: float = 30
    ) -> list[str]:
        """A canvas run lost a message: continue it by dynamic dispatch from its record.

        Every finished step joins its children (as dynamic steps do), so the steps whose
        needs have all finished and that are still pending can be published; parts of the
        canvas still in flight are absorbed by the steps' claims. One script reads the
        statuses and switches the mode, so a step finishing at the same moment is either
        seen finished here (and joined) or sees the dynamic mode in its own transition
        (and joins itself), never neither. The steps returned are watched from here (their
        messages, published by the caller, may be lost like any other).
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
        res = self._fail_over(keys=keys, args=[json.dumps(kids), *steps, lease_seconds])
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
        self,
        run_id: str,
        parent: str,
        values: list[dict[str, Any]],
        window: int | None = None,
        watch_seconds: float | None = None,
    ) -> list[str]:
        """Record the instances of a fanned-out step (idempotent); returns their ids.

        ``window``: instances sent at once, each ending one sending the next of its lane
        (``instance_ended``); default all. ``watch_seconds``: watch the first window from
        here (recovery.py), as the caller sends them.
        """
        k = self.keys
        ids = [f"{parent}[{i}]" for i in range(len(values))]
        keys = [k.run(run_id), k.step(run_id, parent), *(k.step(run_id, i) for i in ids)]
        args = [json.dumps(ids), window or len(ids), *(json.dumps(v) for v in values)]
        args.append("" if watch_seconds is None else watch_seconds)
        self._add_instances(keys=keys, args=args)
        raw = self.r.hget(k.step(run_id, parent), "instances")
        return json.loads(raw) if raw else ids

    def instance_ended(
        self, run_id: str, instance_id: str, watch_seconds: float | None = None
    ) -> tuple[str | None, bool]:
        """An instance has ended: (the next instance of its lane to send, fan-in due?).

        ``watch_seconds``: what becomes due is watched from here (recovery.py).
        """
        parent, _, rest = instance_id.rpartition("[")
        index = rest.rstrip("]")
        k = self.keys
        keys = [k.run(run_id), k.step(run_id, parent), k.ended_instances(run_id, parent)]
        args = [instance_id, index, parent, "" if watch_seconds is None else watch_seconds]
        nxt, join = (int(x) for x in self._instance_ended(keys=keys, args=args))
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
