-- The same, together with Celery's stored result of the step task (one round trip, and
-- the entry ends exactly when the result Celery hands on from exists).
-- KEYS: result key, then as HAND ON   ARGV: value, expires (0: none), then as HAND ON
local ready = ready_successors(2, 3)
local expires = tonumber(ARGV[2]) or 0
if expires > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
hand_on(2, 3, ready)
return 1
