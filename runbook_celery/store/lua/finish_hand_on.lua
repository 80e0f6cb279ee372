-- finish_hand_on.lua: FINISH of a step in a Celery chain, together with what Celery would do
-- after the step's task returns: publish the next link of the chain (its message, built by
-- kombu, pushed here onto its queue's list), store the step's result (Celery's result
-- key), and HAND ON (the step's watch ends, the next link is watched). One round trip
-- instead of three, and no window in which the step is recorded but what follows it is not
-- yet published. Only when the broker, the result backend and the store share one Redis
-- database. Nothing but FINISH's own refusal record happens when FINISH does not record the
-- step (a duplicate, a superseded or a refused delivery): the caller then lets Celery go on
-- as usual.
--
-- KEYS
--   KEYS[1..f]  as finish.lua's
--   then: result key (celery-task-meta-<task id>), the next link's queue list (kombu's
--   <global_keyprefix><queue>[<sep><priority>]), then hand_on_lib's keys (P:leases, per
--   successor its step hash and arrived set)
-- ARGV
--   ARGV[1..g]  as finish.lua's
--   then: the encoded result, its expiry in seconds (0: none), the message payload (kombu's
--   JSON), then hand_on_lib's arguments; last: the number of these extra arguments (not
--   counting the last two) and of the extra keys
-- Returns
--   as finish.lua
-- Keys derived, not declared: as finish.lua's header says; none more.
local n_keys, n_args = tonumber(ARGV[#ARGV]), tonumber(ARGV[#ARGV - 1])
check(n_keys and n_args and n_keys >= 3 and n_args >= 7 and n_keys <= #KEYS
      and n_args + 2 <= #ARGV, 'finish_hand_on extra counts')
local fk, fa = {}, {}
for i = 1, #KEYS - n_keys do fk[i] = KEYS[i] end
for i = 1, #ARGV - n_args - 2 do fa[i] = ARGV[i] end
local k, a = #fk + 1, #fa + 1  -- the result key, the encoded result
local expires = tonumber(ARGV[a + 1])
local n = tonumber(ARGV[a + 5])
check(expires and tonumber(ARGV[a + 4]) and n and n_keys == 3 + 2 * n
      and n_args == 7 + 2 * n + (tonumber(ARGV[a + 6 + 2 * n]) or -1),
      'result expiry, lease seconds and hand-on counts')
local reply = finish_step(fk, fa)
if reply[1] == 'refused' or reply[1] == 'dup' or reply[1] == 'superseded' then
  return reply
end
local ready = ready_successors(k + 2, a + 3)
-- this delivery recorded the step, so no other delivery stored a result for its task
if expires > 0 then
  redis.call('SET', KEYS[k], ARGV[a], 'EX', expires)
else
  redis.call('SET', KEYS[k], ARGV[a])
end
redis.call('PUBLISH', KEYS[k], ARGV[a])
redis.call('LPUSH', KEYS[k + 1], ARGV[a + 2])
hand_on(k + 2, a + 3, ready)
return reply
