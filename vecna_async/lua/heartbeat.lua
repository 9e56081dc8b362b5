-- Extend the leases a worker still holds. KEYS: the queue's keys.
-- ARGV: queue, sched_channel, lease_ms, then id, token pairs. Returns the ids whose lease is lost
-- (expired and handed to another worker, or settled already).
local q = queue_from(ARGV[1])
local deadline = now_ms() + tonumber(ARGV[3])
local lost = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', q.record .. id, 'o') == token then
    redis.call('ZADD', q.leases, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
