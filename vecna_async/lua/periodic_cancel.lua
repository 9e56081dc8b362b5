-- Stop a periodic definition: no later tick fires; its quarantine record, if any, goes too.
-- KEYS: periodic_defs, periodic_next, periodic_bad. ARGV: code. Returns 1 if either existed.
local removed = redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return math.min(removed, 1)
