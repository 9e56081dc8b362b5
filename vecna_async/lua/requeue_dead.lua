-- Put dead-lettered messages back to ready with a fresh delivery count.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel,
--   write_states (0/1), ids... Each one's stored FAILURE is dropped, so its state is what its
--   record says again (PENDING). Returns the ids that went back.
local q = queue_ready(ARGV[1])
local back = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local rk = q.record .. id
  local p = redis.call('HGET', rk, 'p')
  if redis.call('ZREM', q.dead, id) == 1 and p then
    redis.call('HDEL', rk, 'e', 't', 'o', 'k')
    redis.call('ZREM', q.dead_pending, id)
    redis.call('HSET', rk, 'd', 0)
    redis.call('ZADD', q.ready, p, id)
    if ARGV[3] == '1' then
      redis.call('DEL', q.state .. id)
    end
    back[#back + 1] = id
  end
end
if #back > 0 then
  wake(q)
end
return back
