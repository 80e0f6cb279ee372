-- open_gate.lua: a gate on one step opens (gates.py): approval given, or a decision to
-- retry the failed step. The step is pending again and watched, as its parked message is
-- published by the caller.
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  step           P:run:<run_id>:step:<step_id> (hash)
--   KEYS[3]  run_events     P:run:<run_id>:events
--   KEYS[4]  global_events  P:events
-- ARGV
--   1 run_id   2 step_id   3 now   4 workflow   5 by   6 expected_status
--   ('awaiting_approval' | 'awaiting_decision')   7 event type   8 extra_field
--   9 extra_value   10 lease_s (checked when the step has a parked message)
--   11 secrets_json: values to mask from now on in this run (a JSON list, or '';
--      `retry --env` for names in secrets:), appended to the run's secret_overrides
-- Returns
--   {'ok', parked_sig or ''} | {'wrong', status or 'missing'}
-- Keys derived, not declared:
--   P:leases (the lease index), from KEYS[1] (leases_key)
local st = redis.call('HGET', KEYS[2], 'status')
if st ~= ARGV[6] then return {'wrong', st or 'missing'} end
local sig = redis.call('HGET', KEYS[2], 'parked_sig') or ''
check(sig == '' or tonumber(ARGV[10]), 'lease seconds')
local masked = nil
if ARGV[11] ~= '' then
  masked = cjson.decode(redis.call('HGET', KEYS[1], 'secret_overrides') or '[]')
  for _, v in ipairs(cjson.decode(ARGV[11])) do masked[#masked + 1] = v end
end
if masked and #masked > 0 then
  redis.call('HSET', KEYS[1], 'secret_overrides', cjson.encode(masked))
end
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
