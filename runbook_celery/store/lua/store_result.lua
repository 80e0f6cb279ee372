-- store_result.lua: HAND ON together with Celery's stored result of the step task (one
-- round trip, and the entry ends exactly when the result Celery hands on from exists).
-- Celery's result backend calls it (backend.py) through RunStore.hand_on.
--
-- KEYS
--   KEYS[1]  result key (celery-task-meta-<task id>, written and PUBLISHed as Celery does)
--   KEYS[2..] as hand_on.lua's KEYS
-- ARGV
--   1 value (the encoded result)   2 expires (seconds; 0: none)   3.. as hand_on.lua's ARGV
-- Returns
--   1 (a stored SUCCESS is left as it is, as Celery's backend does; the hand-on is made)
-- Keys derived, not declared: none.
local ready = ready_successors(2, 3)
local expires = tonumber(ARGV[2]) or 0
-- Celery never overwrites a stored SUCCESS (a lost delivery's late result must not replace
-- it); its backend reads the result before each write, one round trip more per step. The
-- check is made here, in the same script as the write (so it cannot race either).
local current = redis.call('GET', KEYS[1])
local decoded, meta = false, nil
if current then decoded, meta = pcall(cjson.decode, current) end
if not (decoded and type(meta) == 'table' and meta['status'] == 'SUCCESS') then
  if expires > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', expires)
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  redis.call('PUBLISH', KEYS[1], ARGV[1])
end
hand_on(2, 3, ready)
return 1
