-- hand_on.lua: HAND ON (see hand_on_lib.lua, which precedes this file).
--
-- KEYS
--   KEYS[1]  lease index  P:leases (zset)
--   then per successor: KEYS[2i] its step hash, KEYS[2i+1] its arrived set
-- ARGV
--   1 member ('<run_id>|<step_id>')   2 lease_s   3 n (successors)
--   then per successor: member, need count (0: no join); then m, then m members that
--   hand on with this one
-- Returns
--   1
-- Keys derived, not declared: none.
hand_on(1, 1, ready_successors(1, 1))
return 1
