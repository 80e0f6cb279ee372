-- renew.lua: RENEW. Extends a lease only for the delivery that holds the step at its current
-- attempt: it never takes a lease another delivery holds. A lease key that merely expired
-- while no other delivery started the step is set again (the same attempt is still current).
-- The lease is renewed with PEXPIRE, the script's first write: a full Redis (maxmemory,
-- noeviction) refuses a script's first write when it may use memory (SET, ZADD) but not
-- PEXPIRE, and once a script has written Redis lets it finish, so the watch's ZADD goes
-- through too: a step keeps its lease and its watch while Redis is full. (Setting a lease
-- key that expired is refused then, whole.)
--
-- KEYS
--   KEYS[1]  step         P:run:<run_id>:step:<step_id> (hash)
--   KEYS[2]  lease        P:run:<run_id>:lease:<step_id> (string)
--   KEYS[3]  lease index  P:leases (zset of run|step by deadline)
--   KEYS[4]  run          P:run:<run_id> (hash; cancel_requested is read)
-- ARGV
--   1 token   2 attempt   3 lease_s (integer > 0)   4 member ('<run_id>|<step_id>')
-- Returns
--   {1, cancel_requested ('1' or '')} | {0, status, current attempt} (superseded)
-- Keys derived, not declared: none.
local h = redis.call('HMGET', KEYS[1], 'status', 'holder', 'attempts')
local other = redis.call('GET', KEYS[2])
if h[1] ~= 'running' or h[2] ~= ARGV[1] or h[3] ~= ARGV[2] or (other and other ~= ARGV[1]) then
  return {0, h[1] or '', h[3] or ''}
end
local lease_s = as_int(ARGV[3])
check(lease_s and lease_s > 0, 'lease seconds')
local cancel = redis.call('HGET', KEYS[4], 'cancel_requested') or ''
if other then
  redis.call('PEXPIRE', KEYS[2], lease_s * 1000)
else
  redis.call('SET', KEYS[2], ARGV[1], 'EX', lease_s)
end
watch(KEYS[3], ARGV[4], lease_s, '')
return {1, cancel}
