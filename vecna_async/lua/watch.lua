-- Ask for a task's finished state to be published to `channel` too, and return its current state.
-- For a waiter that did not send the task itself. KEYS: one key of the queue (for routing).
-- ARGV: queue (packed keys), sched_channel, id, channel.
local q = queue_ready(ARGV[1])
local rk = q.record .. ARGV[3]
local channels = redis.call('HGET', rk, 'r')
if channels then
  if not string.find(' ' .. channels .. ' ', ' ' .. ARGV[4] .. ' ', 1, true) then
    redis.call('HSET', rk, 'r', channels .. ' ' .. ARGV[4])
  end
end
return current_state(q, ARGV[3])
