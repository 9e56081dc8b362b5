-- Move a periodic definition from the tick just fired to its next tick, only if it is still at
-- that tick (compare-and-set: of several schedulers firing the same tick, one advances it), and
-- record that tick as the code's last firing (for the inspection API).
-- KEYS: periodic_defs, periodic_next, periodic_last. ARGV: code, fired_tick_ms, next_tick_ms.
local current = redis.call('ZSCORE', KEYS[2], ARGV[1])
if current and tonumber(current) == tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
  return 1
end
return 0
