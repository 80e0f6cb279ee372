-- pause_resume.lua: pause or resume a run (gates.py). Pausing parks no message by itself:
-- the steps that claim while the run is paused are parked by CLAIM. Resuming hands back
-- every parked message: the parked steps are pending again and watched, as the caller
-- publishes the messages.
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  run_events     P:run:<run_id>:events
--   KEYS[3]  global_events  P:events
-- ARGV
--   1 run_id   2 now   3 workflow   4 by   5 action ('pause' | 'resume')   6 lease_s
-- Returns
--   {'ok', parked message...} | {'finished', status} | {'missing'} | {'noop'}
-- Keys derived, not declared:
--   KEYS[1]..':parked' (list of parked messages); per message, unpark (prelude):
--   KEYS[1]..':step:'..<step id in the message>, and P:leases (the lease index), from
--   KEYS[1] (leases_key)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
if redis.call('HGET', KEYS[1], 'finished_at') then return {'finished', status} end
if ARGV[5] == 'pause' then
  if redis.call('HGET', KEYS[1], 'paused') == '1' then return {'noop'} end
  redis.call('HSET', KEYS[1], 'paused', '1', 'paused_by', ARGV[4], 'paused_at', ARGV[2],
             'status_before_pause', status, 'status', 'paused')
  emit(KEYS[2], KEYS[3], {'type', 'workflow_paused', 'run_id', ARGV[1], 'workflow', ARGV[3],
       'by', ARGV[4], 'ts', ARGV[2]})
  return {'ok'}
end
if redis.call('HGET', KEYS[1], 'paused') ~= '1' then return {'noop'} end
check(tonumber(ARGV[6]), 'lease seconds')
local before = redis.call('HGET', KEYS[1], 'status_before_pause') or 'running'
redis.call('HSET', KEYS[1], 'paused', '0', 'status', before, 'resumed_by', ARGV[4],
           'resumed_at', ARGV[2])
emit(KEYS[2], KEYS[3], {'type', 'workflow_resumed', 'run_id', ARGV[1], 'workflow', ARGV[3],
     'by', ARGV[4], 'ts', ARGV[2]})
local out = {'ok'}
local parked = redis.call('LRANGE', KEYS[1] .. ':parked', 0, -1)
redis.call('DEL', KEYS[1] .. ':parked')
for _, m in ipairs(parked) do
  unpark(KEYS[1], m, ARGV[6])
  out[#out + 1] = m
end
return out
