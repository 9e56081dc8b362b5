-- Store (or replace) a periodic definition and wake the schedulers. A quarantined definition under
-- the same code is superseded: its record goes.
-- Replacing a definition whose spec and time zone are unchanged keeps its next fire time: a
-- process re-declaring its schedule at each start must neither fire a tick twice nor skip the
-- one that is due (nor one missed while nothing ran: it fires once, as it would have).
-- KEYS: periodic_defs, periodic_next, periodic_bad. ARGV: sched_channel, code, definition,
-- first_fire_ms, spec, tz. Returns the definition's next fire time (ms).
local next_fire = tonumber(ARGV[4])
local stored = redis.call('HGET', KEYS[1], ARGV[2])
local current = redis.call('ZSCORE', KEYS[2], ARGV[2])
local keep = false
if stored and current then
  local ok, old = pcall(cjson.decode, stored)
  keep = ok and type(old) == 'table' and old.spec == ARGV[5] and old.tz == ARGV[6]
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if keep then
  next_fire = tonumber(current)
else
  redis.call('ZADD', KEYS[2], next_fire, ARGV[2])
end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[1], '* ' .. next_fire) -- '*' is never a queue name
return next_fire
