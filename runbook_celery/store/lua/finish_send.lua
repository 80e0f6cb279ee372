-- finish_send.lua: FINISH of a step in dynamic dispatch, together with sending the children
-- it makes ready: each candidate child's message (built by kombu, captured) is pushed onto
-- its queue's list if, and only if, this FINISH records the step and answers that child
-- ready. No moment in which the step is recorded but a ready child not yet sent. Only when
-- the broker and the store share one Redis database.
--
-- KEYS
--   KEYS[1..f]  as finish.lua's
--   then per candidate child: its message's queue list (kombu's
--   <global_keyprefix><queue>[<sep><priority>])
-- ARGV
--   ARGV[1..g]  as finish.lua's
--   then n child ids, then their n message payloads (kombu's JSON, same order as the
--   KEYS); last: 2n, then n
-- Returns
--   as finish.lua (the ready children listed there were sent if they had a message)
-- Keys derived, not declared: as finish.lua's header says; none more.
local n, n_args = tonumber(ARGV[#ARGV]), tonumber(ARGV[#ARGV - 1])
check(n and n_args and n >= 1 and n_args == 2 * n and n <= #KEYS and n_args + 2 <= #ARGV,
      'finish_send extra counts')
local fk, fa = {}, {}
for i = 1, #KEYS - n do fk[i] = KEYS[i] end
for i = 1, #ARGV - n_args - 2 do fa[i] = ARGV[i] end
local k, a = #fk + 1, #fa + 1  -- the first child's list, the first child's id
local reply = finish_step(fk, fa)
if reply[1] == 'refused' or reply[1] == 'dup' or reply[1] == 'superseded' then
  return reply
end
local index = {}
for i = 1, n do index[ARGV[a + i - 1]] = i end
for j = 3, #reply do
  local i = index[reply[j]]
  if i then redis.call('LPUSH', KEYS[k + i - 1], ARGV[a + n + i - 1]) end
end
return reply
