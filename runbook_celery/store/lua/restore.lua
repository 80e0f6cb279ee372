-- restore.lua: put one unacknowledged message of kombu's Redis transport back on its queue
-- (recovery.py), exactly once: only the caller that removes it from the unacked hash
-- pushes it. The keys are kombu's, named as its transport options name them (with their
-- global_keyprefix; engine/brokerlayout.py), not ours.
--
-- KEYS
--   KEYS[1]  unacked        kombu's hash: delivery tag -> [payload, exchange, routing key]
--   KEYS[2]  unacked_index  kombu's zset: delivery tag by time
--   KEYS[3]  queue          the list the message goes back to (<queue>, or its priority list
--                           <queue><sep><step>)
-- ARGV
--   1 delivery tag   2 payload (JSON, marked redelivered)
-- Returns
--   1 (restored) | 0 (no such unacknowledged message: acknowledged or restored meanwhile)
-- Keys derived, not declared: none.
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[2])
  return 1
end
return 0
