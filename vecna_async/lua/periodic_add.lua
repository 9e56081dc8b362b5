-- Store (or replace) a periodic definition and its first fire time, and wake the schedulers. A
-- quarantined definition under the same code is superseded: its record goes.
-- KEYS: periodic_defs, periodic_next, periodic_bad. ARGV: sched_channel, code, definition,
-- first_fire_ms.
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[1], '* ' .. ARGV[4]) -- '*' is never a queue name
return 1
