-- Extend the leases a worker still holds. KEYS: one key of the queue (for routing).
-- ARGV: queue (packed keys), sched_channel, lease_ms, max_step_ms (lease clock), then id, token
-- pairs. Returns the tokens whose lease is lost (expired and taken by another delivery, or
-- settled already); as 'gone:' .. token if the message record no longer exists and no state
-- says another delivery finished it (Redis lost its data: restarted without persistence).
local q = queue_ready(ARGV[1])
local deadline = lease_clock(q, now_ms(), tonumber(ARGV[4])) + tonumber(ARGV[3])
local lost = {}
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local rk = q.record .. id
  if redis.call('HGET', rk, 'o') == token then
    redis.call('ZADD', q.leases, 'XX', deadline, id)
  else
    lost[#lost + 1] = lost_token(q, id, token)
  end
end
return lost
