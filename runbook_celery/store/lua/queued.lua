-- queued.lua: which of some task ids wait in a queue, at any priority (recovery.py). Runs in
-- Redis: the queue is read where it lives, not copied to the worker. Read only.
--
-- KEYS
--   the lists of one queue: <queue> and its priority lists <queue><sep><step> (kombu's, as
--   engine/brokerlayout.py names them from the transport options)
-- ARGV
--   task ids
-- Returns
--   the ids found queued
-- Keys derived, not declared: none.
local want = {}
for i = 1, #ARGV do want[ARGV[i]] = true end
local found = {}
for _, key in ipairs(KEYS) do
  for _, m in ipairs(redis.call('LRANGE', key, 0, -1)) do
    local id = string.match(m, '"id": "([^"]*)"')
    if id and want[id] then found[#found + 1] = id; want[id] = nil end
  end
end
return found
