-- cancel_fanned.lua: Cancel, step 3: a fanned-out step whose instances have all ended is
-- cancelled now, without waiting for its fan-in (the instances still queued may take a
-- while to drain). When no step is left the run ends here (finalize).
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  run_events     P:run:<run_id>:events
--   KEYS[3]  global_events  P:events
--   then per fanned-out step: KEYS[4+2j] its step hash, KEYS[5+2j] its ended-instances set
-- ARGV
--   1 run_id   2 now   3 workflow   4 reason   5.. step ids (same order as the KEYS pairs)
-- Returns
--   {n_cancelled, final_status_or_empty, admitted run ids...} | {-1, ''} (no such run)
--   | {0, status} (the run had ended)
-- Keys derived, not declared:
--   finalize (prelude), from KEYS[1], when this ends the run: every key of the run
--     (KEYS[1]..':step:'|':arrived:'|':logs:'|':ended:'..<id> for each step and
--     instance listed in the run and step hashes, :active, :parked) for its expiry, and
--     P:leases; release_group: the concurrency group's zset and its ':queue' (their name is
--     read from the run hash, field cgroup_key) and the hashes of the runs it admits
--     (P:run:<admitted id>). Not derived from a declared key: named by data.
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
