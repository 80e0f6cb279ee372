-- KEYS: lease index; ARGV: member, cutoff -> 1 when removed (its score was still <= cutoff)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
