-- A worker stops waiting: drop its idle registration and hand back, unrun, whatever was handed to
-- its inbox meanwhile (those messages go back to ready at once, not counted as a delivery).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, session. Returns how many were handed back.
local q = queue_from(ARGV[1])
local session = ARGV[3]
redis.call('HDEL', q.idle, session)
redis.call('LREM', q.idle_order, 0, session)
local inbox = q.inbox .. session
local back = 0
for _, entry in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
  local d, id = string.match(entry, '^(%d+) (%S+) ')
  local rk = q.record .. id
  if redis.call('HGET', rk, 'o') == session .. '/' .. d then
    redis.call('HDEL', rk, 'o')
    redis.call('HINCRBY', rk, 'd', -1)
    redis.call('ZREM', q.leases, id)
    redis.call('ZADD', q.ready, redis.call('HGET', rk, 'p'), id)
    back = back + 1
  end
end
redis.call('DEL', inbox)
if back > 0 then
  wake(q)
end
return back
