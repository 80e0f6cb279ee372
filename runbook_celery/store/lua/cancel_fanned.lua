-- Cancel, step 3: a fanned-out step whose instances have all ended is cancelled now,
-- without waiting for its fan-in (the instances still queued may take a while to drain).
-- KEYS: run, run_events, global_events, then per fanned-out step: its key, its set of
--       ended instances   ARGV: run_id, now, workflow, reason, step ids...
-- -> {n_cancelled, final_status_or_empty, admitted run ids...}
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'remaining')
if not run[1] then return {-1, ''} end
if run[2] then return {0, run[1]} end
local remaining = as_int(run[3], 0)
check(remaining, 'remaining of the run')
local todo = {}
for j = 5, #ARGV do
  local key = KEYS[4 + 2 * (j - 5)]
  local p = redis.call('HMGET', key, 'status', 'instance_count')
  local n = tonumber(p[2] or '')
  if p[1] == 'running' and n and redis.call('SCARD', KEYS[5 + 2 * (j - 5)]) >= n then
    todo[#todo + 1] = j
  end
end
for _, j in ipairs(todo) do
  redis.call('HSET', KEYS[4 + 2 * (j - 5)], 'status', 'cancelled', 'finished_at', ARGV[2],
             'reason', ARGV[4])
  emit(KEYS[2], KEYS[3], {'type', 'step_cancelled', 'run_id', ARGV[1], 'workflow', ARGV[3],
       'step', ARGV[j], 'reason', ARGV[4], 'ts', ARGV[2]})
end
if #todo > 0 then remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -#todo) end
local out = {#todo, finalize(KEYS[1], KEYS[2], KEYS[3], remaining, ARGV[2], ARGV[1], ARGV[3])}
for _, r in ipairs(admitted) do out[#out + 1] = r end
return out
