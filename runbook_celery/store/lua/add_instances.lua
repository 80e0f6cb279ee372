-- add_instances.lua: fan-out: record the instances of a step, all at once and only once.
-- The first window of them is due now (sent by the caller): watched from here, unless the
-- run is being cancelled (the caller cancels them instead of sending them).
--
-- KEYS
--   KEYS[1]    run          P:run:<run_id> (hash: remaining and instance_count grow)
--   KEYS[2]    parent step  P:run:<run_id>:step:<parent> (hash)
--   KEYS[3..]  the instance step hashes P:run:<run_id>:step:<parent>[<i>]
-- ARGV
--   1 instance ids (JSON list)   2 window   3..2+n each instance's values (JSON)
--   3+n lease_s ('' = watch nothing: a broker whose messages cannot be looked for)
-- Returns
--   1 (recorded) | 0 (the step already had its instances: nothing changed)
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key); the run id from KEYS[1] (run_id_of)
if redis.call('HGET', KEYS[2], 'instances') then return 0 end
local n = #KEYS - 2
local ids = cjson.decode(ARGV[1])
local window = as_int(ARGV[2])
local lease_s = ARGV[#ARGV]
check(type(ids) == 'table' and #ids == n and window and #ARGV == n + 3
      and (lease_s == '' or tonumber(lease_s)), 'fan-out arguments')
local run = redis.call('HMGET', KEYS[1], 'cancel_requested', 'remaining', 'instance_count')
check(as_int(run[2], 0) and as_int(run[3], 0), 'remaining/instance_count of the run')
local watching = lease_s ~= '' and run[1] ~= '1'
redis.call('HSET', KEYS[2], 'instances', ARGV[1], 'instance_count', n, 'fan_window', window)
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'status', 'pending', 'attempts', '0', 'values', ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'remaining', n)
redis.call('HINCRBY', KEYS[1], 'instance_count', n)
if watching then
  local leases, run_id = leases_key(KEYS[1]), run_id_of(KEYS[1])
  for i = 1, math.min(window, n) do watch(leases, run_id .. '|' .. ids[i], lease_s, 'NX') end
end
return 1
