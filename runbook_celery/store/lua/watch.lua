-- WATCH (the lease index, by Redis' clock). KEYS: lease index
-- ARGV: seconds, flag ('' | 'NX' | 'XX'), members...
for i = 3, #ARGV do watch(KEYS[1], ARGV[i], ARGV[1], ARGV[2]) end
return 1
