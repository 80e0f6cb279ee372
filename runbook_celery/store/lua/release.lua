-- release.lua: RELEASE. A fanned-out step's delivery lets go of the step while its instances
-- run (the fan-in task records it): no holder, no lease, no slot. Its lease-index entry
-- stays until the delivery has published the instances (hand_on). Holder only.
--
-- KEYS
--   KEYS[1]  run    P:run:<run_id> (hash)
--   KEYS[2]  step   P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  lease  P:run:<run_id>:lease:<step_id> (string)
-- ARGV
--   1 token   2 attempt   3 step_id
-- Returns
--   {1, parked message to publish or ''} | {0} (this delivery does not hold the step)
-- Keys derived, not declared:
--   release_slot (prelude), from KEYS[1]: P:run:<run_id>:active (set), P:run:<run_id>:parked
--     (list), and for the parked message it lets go, that step's hash
--     (KEYS[1]..':step:'..<step id read from the message>) and P:leases
if not holds(KEYS[2], ARGV[1], ARGV[2]) then return {0} end
local lease = redis.call('GET', KEYS[3])
redis.call('HDEL', KEYS[2], 'holder')
if lease == ARGV[1] then redis.call('DEL', KEYS[3]) end
return {1, release_slot(KEYS[1], ARGV[3]) or ''}
