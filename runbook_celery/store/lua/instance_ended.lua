-- instance_ended.lua: an instance has ended (recorded, or a replay of it): it joins its
-- parent's set of ended instances; its lane's next instance (index + window) is due unless
-- the run is being cancelled; the fan-in is due once every instance has ended and the
-- parent is open. What becomes due is watched in this same transition (the next instance,
-- still pending; the parent, whose join the caller runs): a worker lost before sending or
-- joining leaves a watch that runs out, and the reconciler sends the instance or the
-- fan-in again. Idempotent, so a redelivered instance repeats it safely; and since the
-- watch covers a lost join, the fan-in is due only to the call that ended the last
-- instance, not to every replay after it (after a cancel, each of a window of queued
-- instance messages is a replay). Without a watch (lease_s '', an AMQP broker) a replay
-- is how a lost join is found, so there every call finds it due.
--
-- KEYS
--   KEYS[1]  run          P:run:<run_id> (hash; cancel_requested is read)
--   KEYS[2]  parent step  P:run:<run_id>:step:<parent> (hash)
--   KEYS[3]  ended set    P:run:<run_id>:ended:<parent> (set)
-- ARGV
--   1 instance id   2 its index   3 parent id   4 lease_s ('' = watch nothing)
-- Returns
--   {next_index or -1 (only while that instance is pending), 1 when the fan-in is due else 0}
-- Keys derived, not declared:
--   KEYS[2]..'['..(index + window)..']' (the next instance's step hash: its status)
--   P:leases (the lease index), from KEYS[1] (leases_key); the run id from KEYS[1] (run_id_of)
local p = redis.call('HMGET', KEYS[2], 'instance_count', 'fan_window', 'status')
local n = tonumber(p[1] or '')
if not n then return {-1, 0} end
local window = tonumber(p[2] or '') or n
local i = tonumber(ARGV[2]) or n
local lease_s = ARGV[4]
check(lease_s == '' or tonumber(lease_s), 'lease seconds')
local nxt = -1
if i + window < n and redis.call('HGET', KEYS[1], 'cancel_requested') ~= '1'
   and redis.call('HGET', KEYS[2] .. '[' .. (i + window) .. ']', 'status') == 'pending' then
  nxt = i + window
end
local new = 1 - redis.call('SISMEMBER', KEYS[3], ARGV[1])
local count = redis.call('SCARD', KEYS[3]) + new
local join = 0
if count >= n and not is_terminal(p[3]) and (new == 1 or lease_s == '') then join = 1 end
redis.call('SADD', KEYS[3], ARGV[1])
if lease_s ~= '' then
  local leases, run_id = leases_key(KEYS[1]), run_id_of(KEYS[1])
  if nxt >= 0 then watch(leases, run_id .. '|' .. ARGV[3] .. '[' .. nxt .. ']', lease_s, 'NX') end
  if join == 1 then watch(leases, run_id .. '|' .. ARGV[3], lease_s, 'NX') end
end
return {nxt, join}
