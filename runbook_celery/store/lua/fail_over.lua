-- fail_over.lua: a canvas run continues by dynamic dispatch. Every finished step joins its
-- children; the steps still pending whose needs have all finished are returned, and
-- watched from here (their messages are published by the caller and may be lost like any
-- other). Reading the statuses and switching the mode is one transition.
--
-- KEYS
--   KEYS[1]            run  P:run:<run_id> (hash; its mode becomes 'dynamic')
--   KEYS[2..1+n]       the step hashes
--   KEYS[2+n..1+2n]    their arrived sets (same order)
-- ARGV
--   1 JSON list, per step, of its children's 1-based positions   2..1+n step ids
--   2+n lease_s (a number)
-- Returns
--   the 1-based positions of the steps still pending whose needs have all finished
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key); the run id from KEYS[1] (run_id_of)
local terminal = is_terminal
local ok, kids = pcall(cjson.decode, ARGV[1])
check(ok and type(kids) == 'table', 'children')
local n = #kids
check(#KEYS == 1 + 2 * n and #ARGV == n + 2 and tonumber(ARGV[n + 2]), 'fail-over arguments')
for i = 1, n do
  check(type(kids[i]) == 'table', 'children of step ' .. i)
  for _, c in ipairs(kids[i]) do
    check(type(c) == 'number' and c == math.floor(c) and c >= 1 and c <= n, 'child position')
  end
end
local status, pending_needs = {}, {}
for i = 1, n do
  status[i] = redis.call('HGET', KEYS[1 + i], 'status')
  pending_needs[i] = 0
end
redis.call('HSET', KEYS[1], 'mode', 'dynamic')
for i = 1, n do
  for _, c in ipairs(kids[i]) do
    if terminal(status[i]) then
      redis.call('SADD', KEYS[1 + n + c], ARGV[1 + i])
    else
      pending_needs[c] = pending_needs[c] + 1
    end
  end
end
local ready = {}
for i = 1, n do
  if (not status[i] or status[i] == 'pending') and pending_needs[i] == 0 then
    ready[#ready + 1] = i
    watch(leases_key(KEYS[1]), run_id_of(KEYS[1]) .. '|' .. ARGV[1 + i], ARGV[n + 2], '')
  end
end
return ready
