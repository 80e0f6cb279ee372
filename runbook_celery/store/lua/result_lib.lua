-- result_lib.lua: a task's result written as Celery's Redis backend writes it (SET, with
-- its expiry, and PUBLISH to the same channel), keeping Celery's rule that a stored
-- SUCCESS is never replaced (a lost delivery's late result must not overwrite it). Celery
-- reads the result before every write for that, one round trip more; here the check is
-- made in the script that writes (so it cannot race either). Used by store_result.lua and
-- set_result.lua.
--   KEYS[k]  the result key (celery-task-meta-<task id>)
--   value    the encoded result     expires  seconds (0: none)
-- Returns true when written, false when a SUCCESS was kept.
local function write_result(k, value, expires)
  local current = redis.call('GET', KEYS[k])
  local decoded, meta = false, nil
  if current then decoded, meta = pcall(cjson.decode, current) end
  if decoded and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return false end
  if expires > 0 then
    redis.call('SET', KEYS[k], value, 'EX', expires)
  else
    redis.call('SET', KEYS[k], value)
  end
  redis.call('PUBLISH', KEYS[k], value)
  return true
end
