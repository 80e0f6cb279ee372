-- finish_hand_on.lua: FINISH of a step whose task Celery would follow with a result write
-- (and, for a chain link, a publish and a hand-on), together with that work: store the
-- step's result (Celery's result key), push the next link of its chain (its message,
-- built by kombu, onto its queue's list), HAND ON (the step's watch ends, the next link is
-- watched). One round trip instead of up to three, and no window in which the step is
-- recorded but what follows it is not yet published. A chord member stores its result
-- only: Celery counts it toward its chord after this, and it hands on then (task_postrun).
-- Only when the broker, the result backend and the store share one Redis database.
-- Nothing but FINISH's own refusal record happens when FINISH does not record the step
-- (a duplicate, a superseded or a refused delivery): the caller then lets Celery go on as
-- usual.
--
-- KEYS
--   KEYS[1..f]  as finish.lua's
--   then: the result key (celery-task-meta-<task id)); when pushing, the next link's
--   queue list (kombu's <global_keyprefix><queue>[<sep><priority>]); when handing on,
--   hand_on_lib's keys (P:leases, per successor its step hash and arrived set)
-- ARGV
--   ARGV[1..g]  as finish.lua's
--   then: the encoded result, its expiry in seconds (0: none), '1' to push (then the
--   message payload, kombu's JSON) or '', '1' to hand on (then hand_on_lib's arguments)
--   or ''; last: the number of these extra arguments (not counting the last two) and of
--   the extra keys
-- Returns
--   as finish.lua
-- Keys derived, not declared: as finish.lua's header says; none more.
local n_keys, n_args = tonumber(ARGV[#ARGV]), tonumber(ARGV[#ARGV - 1])
check(n_keys and n_args and n_keys >= 1 and n_args >= 4 and n_keys <= #KEYS
      and n_args + 2 <= #ARGV, 'finish_hand_on extra counts')
local fk, fa = {}, {}
for i = 1, #KEYS - n_keys do fk[i] = KEYS[i] end
for i = 1, #ARGV - n_args - 2 do fa[i] = ARGV[i] end
local k, a = #fk + 1, #fa + 1  -- the result key, the encoded result
local expires = tonumber(ARGV[a + 1])
local push = ARGV[a + 2] == '1'
local kh, ah = k + 1, a + 3  -- where the next parts start
if push then kh, ah = kh + 1, ah + 1 end
local hand = ARGV[ah] == '1'
ah = ah + 1
local want_keys, want_args = kh - k, ah - a
if hand then
  local n = tonumber(ARGV[ah + 2])
  check(n and tonumber(ARGV[ah + 1]), 'hand-on lease seconds and count')
  local m = tonumber(ARGV[ah + 3 + 2 * n])
  check(m, 'hand-on members count')
  want_keys, want_args = want_keys + 1 + 2 * n, want_args + 4 + 2 * n + m
end
check(expires and n_keys == want_keys and n_args == want_args, 'finish_hand_on parts')
local reply = finish_step(fk, fa)
if reply[1] == 'refused' or reply[1] == 'dup' or reply[1] == 'superseded' then
  return reply
end
local ready = hand and ready_successors(kh, ah) or {}
-- this delivery recorded the step, so no other delivery stored a result for its task
if expires > 0 then
  redis.call('SET', KEYS[k], ARGV[a], 'EX', expires)
else
  redis.call('SET', KEYS[k], ARGV[a])
end
redis.call('PUBLISH', KEYS[k], ARGV[a])
if push then redis.call('LPUSH', KEYS[k + 1], ARGV[a + 3]) end
if hand then hand_on(kh, ah, ready) end
return reply
