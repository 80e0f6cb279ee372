-- handback.lua: HANDBACK. A delivery gives its step back without a result (its worker is
-- shutting down, or it stopped the step itself after losing its lease): pending again,
-- attempt not counted, still watched. Holder only, as FINISH (a refused write is a
-- step_result_discarded event).
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  step           P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  lease          P:run:<run_id>:lease:<step_id> (string: the holder's token)
--   KEYS[4]  run_events     P:run:<run_id>:events (stream)
--   KEYS[5]  global_events  P:events (stream)
-- ARGV
--   1 run_id   2 step_id   3 token   4 now   5 workflow   6 attempt   7 reason
--   8 lease_s (a number)
-- Returns
--   {1, parked message to publish or ''} | {-1} (superseded, or the step is not running)
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key)
--   release_slot (prelude), from KEYS[1]: P:run:<run_id>:active (set), P:run:<run_id>:parked
--     (list), and for the parked message it lets go, that step's hash
--     (KEYS[1]..':step:'..<step id read from the message>) and P:leases
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
