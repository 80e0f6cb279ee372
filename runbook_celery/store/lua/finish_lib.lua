-- finish_lib.lua: FINISH's body, as a function of its KEYS and ARGV (the tables of finish.lua's
-- header), so that finish_hand_on.lua can run it on the first part of its own.
-- KEYS, ARGV: as finish.lua's (passed in, not the script's globals)
-- Returns: as finish.lua
-- Keys derived, not declared: as finish.lua's header says.
local function finish_step(KEYS, ARGV)
  local h = redis.call('HMGET', KEYS[2], 'status', 'holder', 'attempts', 'finished_by',
                       'started_at')
  local st = h[1]
  local started = ARGV[12] ~= ''
  local expect, decision, decided_by = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
  if expect ~= '' and st ~= expect then return {'refused', st or 'unknown'} end
  if is_terminal(st) then
    if started and h[4] ~= ARGV[3] then  -- finished by another delivery meanwhile
      discard(KEYS[4], KEYS[5], ARGV[1], ARGV[11], ARGV[2], ARGV[12], ARGV[5], ARGV[4],
              h[3] or '')
      return {'superseded'}
    end
    return {'dup', st}
  end
  local run = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'mode', 'remaining',
                         'failures')
  if not run[1] then return {'dup', 'gone'} end
  if not st then return {'dup', 'unknown'} end
  local holder = h[2] or ''
  local lease = redis.call('GET', KEYS[3])
  if (started and (holder ~= ARGV[3] or h[3] ~= ARGV[12]))
     or (not started and holder ~= '' and lease and lease ~= ARGV[3]) then
    discard(KEYS[4], KEYS[5], ARGV[1], ARGV[11], ARGV[2], ARGV[12], ARGV[5], ARGV[4], h[3] or '')
    return {'superseded'}
  end
  -- Everything below is read and checked before the first write.
  local status = ARGV[5]
  local remaining, failures = as_int(run[4], 0), as_int(run[5], 0)
  check(remaining and failures, 'remaining/failures of the run')
  local n_skip = as_int(ARGV[13])
  check(n_skip and n_skip >= 0, 'skip count')
  local base = 13 + n_skip
  local n_children = as_int(ARGV[base + 1])
  check(n_children and n_children >= 0 and #ARGV == base + 2 * n_children + 6
        and #KEYS == 5 + n_skip + n_children, 'finish arguments')
  local watch_s = ARGV[#ARGV - 4]
  check(watch_s == '' or tonumber(watch_s), 'lease seconds')
  -- the run's dispatch mode now, not when the step started: a canvas run failed over to
  -- dynamic dispatch while this step ran (fail_over_to_dynamic) needs this step's join, and
  -- Celery's canvas skips nothing after a failure once the run has failed over
  local dynamic = run[3] == 'dynamic'
  local skip_status = 'skipped'
  if run[2] == '1' then skip_status = 'cancelled' end
  local skips = {}
  for i = 1, (dynamic and 0 or n_skip) do
    local sk = redis.call('HGET', KEYS[5 + i], 'status')
    if not is_terminal(sk) and sk ~= 'running' then skips[#skips + 1] = i end
  end
  -- joins: each child's arrived set as it will be once this step is in it
  local ready, watched = {}, {}
  for i = 1, n_children do
    local key = KEYS[5 + n_skip + i]
    local need_count = as_int(ARGV[base + 2 * i + 1])
    check(need_count, 'need count')
    local count = redis.call('SCARD', key) + 1 - redis.call('SISMEMBER', key, ARGV[2])
    if dynamic and count >= need_count then
      local child = ARGV[base + 2 * i]
      ready[#ready + 1] = child
      if watch_s ~= '' and redis.call('HGET', KEYS[1] .. ':step:' .. child, 'status')
                           == 'pending' then
        watched[#watched + 1] = child
      end
    end
  end
  -- writes
  local fields = {'status', status, 'finished_at', ARGV[4], 'finished_by', ARGV[3]}
  if ARGV[6] ~= '' then fields[#fields+1] = 'exit_code'; fields[#fields+1] = ARGV[6] end
  if ARGV[7] ~= '' then fields[#fields+1] = 'outputs'; fields[#fields+1] = ARGV[7] end
  if ARGV[8] ~= '' then fields[#fields+1] = 'stderr_tail'; fields[#fields+1] = ARGV[8] end
  if ARGV[9] ~= '' then fields[#fields+1] = 'reason'; fields[#fields+1] = ARGV[9] end
  if ARGV[10] == '1' then fields[#fields+1] = 'allowed_failure'; fields[#fields+1] = '1' end
  if st == 'pending' then
    -- never started (skipped/cancelled/exhausted): give it a start time for the record
    fields[#fields+1] = 'started_at'
    fields[#fields+1] = h[5] or ARGV[4]
  end
  fields[#fields+1] = 'deliveries'; fields[#fields+1] = '0'
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('HDEL', KEYS[2], 'holder')
  append_history(KEYS[2], ARGV[#ARGV - 3])
  if lease == ARGV[3] or not lease then redis.call('DEL', KEYS[3]) end
  -- the lease-index entry stays until the task has handed on (hand_on)
  if decision ~= '' then
    emit(KEYS[4], KEYS[5], {'type', decision, 'run_id', ARGV[1], 'step', ARGV[2],
         'by', decided_by, 'ts', ARGV[4], 'workflow', ARGV[11]})
    -- the run waited for this decision; it goes on (finalize below may end it instead)
    if run[1] == 'awaiting_decision' then redis.call('HSET', KEYS[1], 'status', 'running') end
  end
  local ev = {'type', 'step_' .. status, 'run_id', ARGV[1], 'workflow', ARGV[11],
              'step', ARGV[2], 'ts', ARGV[4]}
  if ARGV[12] ~= '' then ev[#ev+1] = 'attempt'; ev[#ev+1] = ARGV[12] end
  if ARGV[6] ~= '' then ev[#ev+1] = 'exit_code'; ev[#ev+1] = ARGV[6] end
  if ARGV[9] ~= '' then ev[#ev+1] = 'reason'; ev[#ev+1] = ARGV[9] end
  emit(KEYS[4], KEYS[5], ev)
  remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1 - #skips)
  if status == 'failed' and ARGV[10] ~= '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
  for _, i in ipairs(skips) do
    redis.call('HSET', KEYS[5 + i], 'status', skip_status, 'finished_at', ARGV[4],
               'reason', 'needs ' .. ARGV[2] .. ' ' .. status)
    emit(KEYS[4], KEYS[5], {'type', 'step_' .. skip_status, 'run_id', ARGV[1],
         'workflow', ARGV[11], 'step', ARGV[13 + i], 'ts', ARGV[4]})
  end
  for i = 1, n_children do redis.call('SADD', KEYS[5 + n_skip + i], ARGV[2]) end
  for _, child in ipairs(watched) do
    watch(leases_key(KEYS[1]), ARGV[1] .. '|' .. child, watch_s, 'NX')
  end
  local out = {remaining, ''}
  for _, child in ipairs(ready) do out[#out + 1] = child end
  local unparked = release_slot(KEYS[1], ARGV[2])
  out[2] = finalize(KEYS[1], KEYS[4], KEYS[5], remaining, ARGV[4], ARGV[1], ARGV[11])
  for _, r in ipairs(admitted) do out[#out + 1] = '@' .. r end
  if unparked then out[#out + 1] = '!' .. unparked end
  return out
end
