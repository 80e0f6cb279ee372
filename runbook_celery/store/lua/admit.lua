-- admit.lua: admission of a new run into its concurrency group (gates.py). The run was
-- recorded as 'queued'. Every check comes before the first write: a group key of the
-- wrong type (written by something else under our prefix) is reported, never
-- half-applied.
--
-- KEYS
--   KEYS[1]  the group's active runs  P:cgroup:<sha256 of the group> (zset)
--   KEYS[2]  the group's queue        KEYS[1]..':queue' (list, oldest first)
--   KEYS[3]  run                      P:run:<run_id> (hash; status becomes 'pending')
-- ARGV
--   1 run_id   2 limit   3 on_conflict ('queue' | 'skip' | 'cancel_running')
-- Returns
--   {'start'} | {'queued'} | {'skip'} | {'cancel', active run ids...} | {'corrupt', key}
-- Keys derived, not declared: none.
local t_active = redis.call('TYPE', KEYS[1])['ok']
if t_active ~= 'zset' and t_active ~= 'none' then return {'corrupt', KEYS[1]} end
local t_queue = redis.call('TYPE', KEYS[2])['ok']
if t_queue ~= 'list' and t_queue ~= 'none' then return {'corrupt', KEYS[2]} end
local limit = tonumber(ARGV[2])
if not limit then return {'corrupt', 'limit ' .. ARGV[2]} end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'pending')
  return {'start'}
end
if ARGV[3] == 'skip' then return {'skip'} end
if ARGV[3] == 'cancel_running' then
  local out = {'cancel'}
  for _, r in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do out[#out + 1] = r end
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return out
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return {'queued'}
