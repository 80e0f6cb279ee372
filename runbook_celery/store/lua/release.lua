-- RELEASE. A fanned-out step's delivery lets go of the step while its instances run (the
-- fan-in task records it): no holder, no lease, no slot. Its lease-index entry stays until
-- the delivery has published the instances (hand_on). Holder only.
-- KEYS: run, step, lease   ARGV: token, attempt, step_id -> {1, message or ''} | {0}
if not holds(KEYS[2], ARGV[1], ARGV[2]) then return {0} end
local lease = redis.call('GET', KEYS[3])
redis.call('HDEL', KEYS[2], 'holder')
if lease == ARGV[1] then redis.call('DEL', KEYS[3]) end
return {1, release_slot(KEYS[1], ARGV[3]) or ''}
