-- A worker's heartbeat in the worker registry (worker/presence.py): its HASH rewritten with
-- last_seen = now (Redis's clock, so hosts with skewed clocks agree), kept for ttl_ms, and its
-- entry in the index scored with now. A few of the oldest index entries whose HASH has expired
-- (workers that died without leaving) are pruned: bounded work per call.
-- KEYS: workers_index. ARGV: worker_prefix, name, ttl_ms, then field, value pairs.
-- Returns now (epoch ms).
local now = now_ms()
local key = ARGV[1] .. ARGV[2]
local fields = { 'last_seen', now }
for i = 4, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSETNX', key, 'started', now) -- a worker that comes back after expiring restarts
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[2])
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, 9)) do
  if redis.call('EXISTS', ARGV[1] .. name) == 0 then
    redis.call('ZREM', KEYS[1], name)
  end
end
return now
