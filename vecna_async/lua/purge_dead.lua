-- Delete dead-lettered messages for good (their FAILURE states stay until they expire).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, ids...
-- Returns the ids deleted.
local q = queue_ready(ARGV[1])
local gone = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', q.dead, id) == 1 then
    redis.call('ZREM', q.dead_pending, id)
    redis.call('DEL', q.record .. id)
    gone[#gone + 1] = id
  end
end
return gone
