-- watch.lua: WATCH. Watches ``run|step`` members in the lease index, scored by Redis' clock
-- (the step's message is published and may be lost: the reconciler looks for it then).
--
-- KEYS
--   KEYS[1]  lease index  P:leases (zset)
-- ARGV
--   1 seconds   2 flag ('' | 'NX' | 'XX')   3.. members ('<run_id>|<step_id>')
-- Returns
--   1
-- Keys derived, not declared: none.
for i = 3, #ARGV do watch(KEYS[1], ARGV[i], ARGV[1], ARGV[2]) end
return 1
