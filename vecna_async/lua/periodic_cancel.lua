-- Stop a periodic definition: no later tick fires; its quarantine record and its last firing,
-- if any, go too.
-- KEYS: periodic_defs, periodic_next, periodic_bad, periodic_last. ARGV: code.
-- Returns 1 if the definition or its quarantine record existed.
local removed = redis.call('HDEL', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return math.min(removed, 1)
