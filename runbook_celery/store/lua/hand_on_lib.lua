-- hand_on_lib.lua: the two halves of HAND ON, shared by hand_on.lua and store_result.lua.
-- A step's task has handed on (published what follows it, or stored the result Celery
-- hands on from): stop watching it, and watch each successor that is now ready and still
-- pending, so that a message lost between here and that step's claim (a worker killed
-- between popping it from its queue and recording it unacknowledged, or before it wrote
-- its first watch) is found by the reconciler. Steps whose transitions this task made for
-- them hand on with it (a fanned-out step joined inline by its last instance).
-- The functions take the position of their first key (k) and argument (a):
--   KEYS[k]  lease index P:leases; then per successor: its step hash, its arrived set
--   ARGV[a]  member, lease_s, n, then per successor: member, need count (0: no join),
--            then m, then m members that hand on with this one
-- Reads first (``ready_successors``, which checks lease_s), then writes (``hand_on``).
-- Keys derived, not declared: none (every key is passed in KEYS).
local function ready_successors(k, a)
  check(tonumber(ARGV[a + 1]), 'lease seconds')
  local n = tonumber(ARGV[a + 2])
  local ready = {}
  for i = 1, n do
    local need = tonumber(ARGV[a + 2 + 2 * i])
    if redis.call('HGET', KEYS[k - 1 + 2 * i], 'status') == 'pending'
       and (need == 0 or redis.call('SCARD', KEYS[k + 2 * i]) >= need) then
      ready[#ready + 1] = ARGV[a + 1 + 2 * i]
    end
  end
  return ready
end
local function hand_on(k, a, ready)
  local n = tonumber(ARGV[a + 2])
  redis.call('ZREM', KEYS[k], ARGV[a])
  for j = 1, tonumber(ARGV[a + 3 + 2 * n]) do
    redis.call('ZREM', KEYS[k], ARGV[a + 3 + 2 * n + j])
  end
  for _, member in ipairs(ready) do watch(KEYS[k], member, ARGV[a + 1], 'NX') end
end
