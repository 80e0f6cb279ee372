-- RETRY. A failed attempt that will run again: the step waits as ``retrying``; it stays
-- watched (the retry's message may be lost like any other). Holder only, as FINISH.
-- KEYS: run, step, lease, run_events, global_events
-- ARGV: run_id, step_id, token, now, workflow, attempt, exit_code, reason, delay,
--       history_json, lease_s
-- -> {1, parked message to publish or ''} | {0} (already finished) | {-1} (superseded)
local st = redis.call('HGET', KEYS[2], 'status')
local mine, current = holds(KEYS[2], ARGV[3], ARGV[6])
if not mine or st ~= 'running' then
  discard(KEYS[4], KEYS[5], ARGV[1], ARGV[5], ARGV[2], ARGV[6], 'retrying', ARGV[4], current)
  return {-1}
end
check(tonumber(ARGV[11]), 'lease seconds')
local lease = redis.call('GET', KEYS[3])
redis.call('HSET', KEYS[2], 'status', 'retrying', 'deliveries', '0')
redis.call('HDEL', KEYS[2], 'holder')
append_history(KEYS[2], ARGV[10])
if lease == ARGV[3] or not lease then redis.call('DEL', KEYS[3]) end
watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], ARGV[11], '')
local ev = {'type', 'step_retrying', 'run_id', ARGV[1], 'workflow', ARGV[5], 'step', ARGV[2],
            'attempt', ARGV[6], 'reason', ARGV[8], 'delay', ARGV[9], 'ts', ARGV[4]}
if ARGV[7] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[7] end
emit(KEYS[4], KEYS[5], ev)
return {1, release_slot(KEYS[1], ARGV[2]) or ''}
