-- KEYS: the lists of one queue (each priority); ARGV: task ids -> the ids found queued.
-- Runs in Redis: the queue is read where it lives, not copied to the worker.
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
