-- drop_expired.lua: stop watching a step, only if nobody renewed its entry since it was
-- found expired (a new delivery of the step watches it again).
--
-- KEYS
--   KEYS[1]  lease index  P:leases (zset)
-- ARGV
--   1 member ('<run_id>|<step_id>')   2 cutoff (epoch seconds, Redis' clock)
-- Returns
--   1 when removed (its score was still <= cutoff), else 0
-- Keys derived, not declared: none.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
