-- claim.lua: CLAIM. The one place a delivery takes a step: it becomes the step's holder
-- (fencing token: its token, at the step's next attempt number), takes its lease, and holds
-- a max_active_steps slot (a set of step ids, so a redelivery holds the slot it had).
-- A step that may not start now is parked in the same script when ARGV[13] carries the
-- delivery's message (its message is kept in Redis and the delivery acknowledged).
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  step           P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  lease          P:run:<run_id>:lease:<step_id> (string: the holder's token)
--   KEYS[4]  run_events     P:run:<run_id>:events (stream)
--   KEYS[5]  global_events  P:events (stream)
--   KEYS[6..5+n]      the step hashes of its needs (n = ARGV[9])
--   KEYS[6+n..]       the step hashes whose outputs it reads
-- ARGV
--   1 run_id   2 step_id   3 token (the delivery's fencing token)   4 now (ISO time)
--   5 lease_s (integer > 0)   6 max_deliveries   7 workflow   8 check_needs ('1'/'0')
--   9 n (needs)   10 ignore_cancel ('1'/'0')   11 needs_approval ('1'/'0')
--   12 max_active (0: no cap)   13 park_message ('' = do not park)   14 approval_prompt
-- Returns
--   {'start', attempt, env_override, mode, run outcome so far, outputs_1..} | {'done', status} | {'unknown'}
--   | {'busy', holder} | {'blocked', need position, status}
--   | {'exhausted', deliveries, attempt} | {'cancelled', reason}
--   | {'park', gate} (no message given) | {'parked', gate} | {'done', 'gone'} (no run)
-- Keys derived, not declared:
--   KEYS[1]..':active' (the run's slot set), KEYS[1]..':parked' (list of parked messages),
--   P:leases (the lease index), from KEYS[1] (leases_key)
local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'cancel_reason',
                       'paused', 'mode', 'failures')
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
-- the run's outcome so far (run.status, $RUNBOOK_RUN_STATUS), read here rather than by
-- one more round trip: the rule of RunStore.run_status_so_far
local outcome = 'succeeded'
if run[2] == '1' then
  outcome = run[3] == 'timeout' and 'failed' or 'cancelled'
elseif (tonumber(run[6] or '0') or 0) > 0 then
  outcome = 'failed'
end
local out = {'start', attempts + 1, step[3] or '', run[5] or '', outcome}
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
