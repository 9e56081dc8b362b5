-- Put one dead-lettered message back to ready with a fresh delivery count.
-- KEYS: one key of the queue (for routing).
-- ARGV: queue (packed keys), sched_channel, id, write_states (0/1): its stored FAILURE is dropped,
-- so its state is what the record says again (PENDING).
local q = queue_from(ARGV[1])
local id = ARGV[3]
if redis.call('ZREM', q.dead, id) == 0 then
  return 0
end
local rk = q.record .. id
local p = redis.call('HGET', rk, 'p')
if not p then
  return 0
end
redis.call('HDEL', rk, 'e', 't', 'o', 'k')
redis.call('ZREM', q.dead_pending, id)
redis.call('HSET', rk, 'd', 0)
redis.call('ZADD', q.ready, p, id)
if ARGV[4] == '1' then
  redis.call('DEL', q.state .. id)
end
wake(q)
return 1
