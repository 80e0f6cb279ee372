-- store_result.lua: HAND ON together with Celery's stored result of the step task (one
-- round trip, and the entry ends exactly when the result Celery hands on from exists).
-- The result is written by result_lib.lua's rule (a stored SUCCESS is kept).
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
write_result(1, ARGV[1], tonumber(ARGV[2]) or 0)
hand_on(2, 3, ready)
return 1
