-- await_decision.lua: a step failed with on_failure: pause (gates.py). Its message is kept
-- (parked_sig) until an operator decides; the run waits as awaiting_decision (unless
-- paused). Holder only, as FINISH (a refused write is a step_result_discarded event).
-- The step stops holding a max_active_steps slot and is no longer watched.
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  step           P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  lease          P:run:<run_id>:lease:<step_id> (string: the holder's token)
--   KEYS[4]  run_events     P:run:<run_id>:events (stream)
--   KEYS[5]  global_events  P:events (stream)
-- ARGV
--   1 run_id   2 step_id   3 token   4 now   5 workflow   6 sig (the parked message)
--   7 exit_code   8 reason   9 stderr_json   10 history ('' = none)   11 attempt
-- Returns
--   {1, parked message to publish or ''} | {-1} (superseded, or the step is not running)
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key)
--   release_slot (prelude), from KEYS[1]: P:run:<run_id>:active (set), P:run:<run_id>:parked
--     (list), and for the parked message it lets go, that step's hash
--     (KEYS[1]..':step:'..<step id read from the message>) and P:leases
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
