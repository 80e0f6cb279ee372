-- Admission of a new run into its concurrency group.
-- The run was recorded as 'queued'. KEYS: group active zset, group queue list, run
-- ARGV: run_id, limit, on_conflict
-- -> {'start'} | {'queued'} | {'skip'} | {'cancel', ids...} | {'corrupt', key}
-- Every check comes before the first write: a group key of the wrong type (written by
-- something else under our prefix) is reported, never half-applied.
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
