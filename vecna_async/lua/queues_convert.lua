-- The known-queues set of the previous release (a SET) becomes a ZSET (queue -> last use).
-- KEYS: the known-queues key. ARGV: now_ms.
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
  local members = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1])
  for _, m in ipairs(members) do
    redis.call('ZADD', KEYS[1], ARGV[1], m)
  end
end
return 1
