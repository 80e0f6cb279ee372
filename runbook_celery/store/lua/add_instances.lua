-- Fan-out: record the instances of a step, all at once and only once. The first window
-- of them is due now (sent by the caller): watched from here, unless the run is being
-- cancelled (the caller cancels them instead of sending them).
-- KEYS: run, parent step, instance step keys...
-- ARGV: instance ids json, window, then per instance its values json, then lease_s
--       ('' = watch nothing: a broker whose messages cannot be looked for)
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
