-- Move a periodic definition no scheduler can fire out of the schedule, into the quarantine hash
-- with its record (raw definition, reason, time). Only if it is still the definition that was read:
-- of several schedulers meeting the same bad definition one moves it (and logs it), and one
-- re-sent meanwhile is left to fire.
-- KEYS: periodic_defs, periodic_next, periodic_bad. ARGV: code, definition as read, record.
-- Returns 1 if it moved it, 0 if not.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
