-- A step failed with on_failure: pause. Holder only (as FINISH); the step stops holding a
-- max_active_steps slot. KEYS: run, step, lease, run_events, global_events
-- ARGV: run_id, step_id, token, now, workflow, sig, exit_code, reason, stderr_json, history,
--       attempt  -> {1, parked message to publish or ''} | {-1} (superseded)
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
