-- prelude.lua: the helpers every transition script shares (scripts.py puts this file, after
-- three generated lines declaring RUN_EVENTS_MAXLEN, GLOBAL_EVENTS_MAXLEN and
-- RUN_STREAM_ONLY (the set of event types only the run's stream gets), in front of the
-- script's own file). It declares no KEYS or ARGV of its own: each helper takes the
-- key names it touches as arguments, or derives them from the run key it is given:
--   emit: the run's stream, and the global stream unless the event type is RUN_STREAM_ONLY
--     (XADD, capped).
--   leases_key(run_key) -> P:leases; run_id_of(run_key) -> <run_id>; prefix_of -> P.
--   watch: the lease index it is given (ZADD by Redis' clock).
--   holds / append_history / discard: the step key and streams given.
--   unpark(run_key, message): run_key..':step:'..<step id in the message>, P:leases.
--   release_slot(run_key, step): run_key..':active', run_key..':parked', then unpark.
--   expire_run_keys(run_key, run_events): every key of the run (step, lease, arrived, logs,
--     ended of each step and instance, :active, :parked, :end) and the entries in P:leases.
--   release_group(run_key, run_id): the concurrency-group keys named in the run hash
--     (cgroup_key and cgroup_key..':queue') and P:run:<id> of each run it admits.
--   finalize(run_key, ...): ends the run exactly once (returns '' when a step is left or
--     finished_at is already set), XADDs the final status to run_key..':end' (the one
--     entry a waiter blocks on), scores the run in P:event_runs with its end (ZADD XX),
--     then release_group and expire_run_keys.
-- Returns nothing (it defines local functions and the table ``admitted``).
-- fields start with 'type', <event type>. A step's own path (started, succeeded) is written
-- once: readers of the global stream merge those from the run streams (globalevents.py)
local function emit(run_events, global_events, fields)
  redis.call('XADD', run_events, 'MAXLEN', '~', RUN_EVENTS_MAXLEN, '*', unpack(fields))
  if not RUN_STREAM_ONLY[fields[2]] then
    redis.call('XADD', global_events, 'MAXLEN', '~', GLOBAL_EVENTS_MAXLEN, '*', unpack(fields))
  end
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
-- Redis' clock, read once per script: a script runs atomically (Redis 7 also freezes key
-- expiry at its start), so every watch it writes is scored from the same moment
local script_now = nil
local function now_seconds()
  if not script_now then
    local t = redis.call('TIME')
    script_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return script_now
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
    redis.call('EXPIRE', run_key .. ':end', ttl)
  end
  local ids = json_list(redis.call('HGET', run_key, 'steps'))
  local watched = {}  -- the steps' entries in the lease index, dropped a batch per ZREM
  local i = 1
  while i <= #ids do
    local sid = tostring(ids[i])
    local inst = redis.call('HGET', base .. ':step:' .. sid, 'instances')
    if inst then
      for _, x in ipairs(json_list(inst)) do ids[#ids + 1] = x end
    end
    watched[#watched + 1] = run_id .. '|' .. sid
    if #watched >= 500 then
      redis.call('ZREM', leases, unpack(watched))
      watched = {}
    end
    if ttl > 0 then
      -- not ':lease:': a lease key is only ever written with its expiry (claim, renew)
      -- and vanishes with it
      for _, part in ipairs({':step:', ':arrived:', ':logs:'}) do
        redis.call('EXPIRE', base .. part .. sid, ttl)
      end
      -- only a fanned-out step has an ended set (its instances')
      if inst then redis.call('EXPIRE', base .. ':ended:' .. sid, ttl) end
    end
    i = i + 1
  end
  if #watched > 0 then redis.call('ZREM', leases, unpack(watched)) end
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
    -- a run cancelled for its timeout, or by a worker that cannot read its snapshot, failed
    if cancel[2] == 'timeout' or cancel[2] == 'unsupported_snapshot' then final = 'failed'
    else final = 'cancelled' end
  elseif (tonumber(cancel[3] or '0') or 0) > 0 then final = 'failed' end
  redis.call('HSET', run_key, 'status', final, 'finished_at', now)
  local ev = {'type', 'workflow_' .. final, 'run_id', run_id, 'workflow', workflow, 'ts', now}
  if cancel[1] == '1' and cancel[2] then
    ev[#ev+1] = 'reason'; ev[#ev+1] = cancel[2]
  end
  emit(run_events, global_events, ev)
  redis.call('XADD', run_key .. ':end', '*', 'status', final)
  -- the global reader merges this run's stream up to here (XX: a run recorded before
  -- P:event_runs existed has no entry; key name as in keys.py)
  redis.call('ZADD', prefix_of(run_key) .. ':event_runs', 'XX',
             math.floor(now_seconds() * 1000), run_id)
  release_group(run_key, run_id)
  expire_run_keys(run_key, run_events)
  return final
end
