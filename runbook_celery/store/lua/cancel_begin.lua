-- cancel_begin.lua: Cancel, step 1: the request itself, so that no step starts from now on
-- (CLAIM checks it). It also tells whether the run still waits for its concurrency group's
-- slot (queued, or paused while queued), read in the same script as the request: such a run
-- keeps no step for cleanup, none of its steps ran and the slot it waits for is not its own.
--
-- KEYS
--   KEYS[1]  run            P:run:<run_id> (hash)
--   KEYS[2]  run_events     P:run:<run_id>:events
--   KEYS[3]  global_events  P:events
-- ARGV
--   1 run_id   2 now   3 workflow   4 reason   5 by ('' = nobody named)
-- Returns
--   {'missing'} | {'finished', status} | {'ok', queued} (requested now, or already;
--   queued: '1' while the run waits for its concurrency group's slot, else '')
-- Keys derived, not declared: none.
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'cancel_requested',
                       'status_before_pause')
if not run[1] then return {'missing'} end
if run[2] then return {'finished', run[1]} end
local queued = ''
if run[1] == 'queued' or (run[1] == 'paused' and run[4] == 'queued') then queued = '1' end
if run[3] == '1' then return {'ok', queued} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'cancel_reason', ARGV[4])
local event = {'type', 'workflow_cancelling', 'run_id', ARGV[1], 'workflow', ARGV[3],
               'reason', ARGV[4], 'ts', ARGV[2]}
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'cancelled_by', ARGV[5])
  event[#event + 1] = 'by'
  event[#event + 1] = ARGV[5]
end
emit(KEYS[2], KEYS[3], event)
return {'ok', queued}
