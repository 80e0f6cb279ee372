-- A gate on one step opens: approval given, or a decision to retry the failed step.
-- KEYS: run, step, run_events, global_events
-- ARGV: run_id, step_id, now, workflow, by, expected_status, event, extra_field, extra_value,
--       lease_s (the step is watched again, as its parked message is published)
-- -> {'ok', parked_sig} | {'wrong', status}
local st = redis.call('HGET', KEYS[2], 'status')
if st ~= ARGV[6] then return {'wrong', st or 'missing'} end
local sig = redis.call('HGET', KEYS[2], 'parked_sig') or ''
check(sig == '' or tonumber(ARGV[10]), 'lease seconds')
local run_status = redis.call('HGET', KEYS[1], 'status')
redis.call('HDEL', KEYS[2], 'parked_sig')
redis.call('HSET', KEYS[2], 'status', 'pending', 'deliveries', '0', ARGV[8], ARGV[9])
if ARGV[6] == 'awaiting_approval' then
  redis.call('HSET', KEYS[2], 'approved', '1', 'approved_by', ARGV[5], 'approved_at', ARGV[3])
end
if run_status == 'awaiting_decision' then
  redis.call('HSET', KEYS[1], 'status', 'running')
end
emit(KEYS[3], KEYS[4], {'type', ARGV[7], 'run_id', ARGV[1], 'workflow', ARGV[4],
     'step', ARGV[2], 'by', ARGV[5], 'ts', ARGV[3]})
if sig ~= '' then watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. ARGV[2], ARGV[10], '') end
return {'ok', sig}
