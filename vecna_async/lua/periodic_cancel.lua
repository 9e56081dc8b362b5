-- Stop a periodic definition: no later tick fires. KEYS: periodic_defs, periodic_next. ARGV: code.
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
