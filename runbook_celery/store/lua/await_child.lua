-- await_child.lua: a step with uses: has its child run (childruns.py) and waits for it
-- without holding a worker: its message is kept (parked_sig) and the delivery ends. The
-- child's end finishes the step from outside (FINISH with no attempt), as an operator's
-- decision does. Holder only, as FINISH (a refused write is a step_result_discarded event).
-- If the child run has already ended, nothing is parked: the holder finishes the step
-- itself (the child's hand-off, which came first, found the step not yet waiting).
-- The step stays `running` (its child is), stops holding a max_active_steps slot and is
-- no longer watched: the child's end is what continues it.
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  step           P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  lease          P:run:<run_id>:lease:<step_id> (string: the holder's token)
--   KEYS[4]  run_events     P:run:<run_id>:events (stream)
--   KEYS[5]  global_events  P:events (stream)
--   KEYS[6]  child run      P:run:<child_run_id> (hash)
--   KEYS[7]  waiting        P:children_waiting (zset of run|step: the reconciler's net)
-- ARGV
--   1 run_id   2 step_id   3 token   4 now   5 workflow   6 sig (the parked message)
--   7 attempt   8 child_run_id   9 now in epoch seconds (the zset's score)
-- Returns
--   {1, parked message to publish or ''} (waiting)
--   | {0, child status} (the child has ended, or 'gone': the holder finishes the step)
--   | {-1} (superseded, or the step is not running)
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key)
--   release_slot (prelude), from KEYS[1]: P:run:<run_id>:active (set), P:run:<run_id>:parked
--     (list), and for the parked message it lets go, that step's hash
--     (KEYS[1]..':step:'..<step id read from the message>) and P:leases
check(tonumber(ARGV[9]), 'score')
local st = redis.call('HGET', KEYS[2], 'status')
local mine, current = holds(KEYS[2], ARGV[3], ARGV[7])
if st ~= 'running' or not mine then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[5], ARGV[2], ARGV[7], 'awaiting_child', ARGV[4],
          current)
  return {-1}
end
local child = redis.call('HMGET', KEYS[6], 'status', 'finished_at')
redis.call('HSET', KEYS[2], 'child_run', ARGV[8])
if not child[1] then return {0, 'gone'} end
if child[2] then return {0, child[1]} end
local lease = redis.call('GET', KEYS[3])
redis.call('HSET', KEYS[2], 'parked_sig', ARGV[6], 'waiting_since', ARGV[4])
redis.call('HDEL', KEYS[2], 'holder')
if lease == ARGV[3] then redis.call('DEL', KEYS[3]) end
redis.call('ZREM', leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2])
redis.call('ZADD', KEYS[7], ARGV[9], ARGV[1] .. '|' .. ARGV[2])
emit(KEYS[4], KEYS[5], {'type', 'step_awaiting_child', 'run_id', ARGV[1],
     'workflow', ARGV[5], 'step', ARGV[2], 'child_run', ARGV[8], 'ts', ARGV[4]})
return {1, release_slot(KEYS[1], ARGV[2]) or ''}
