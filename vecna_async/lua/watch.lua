-- Ask for a task's finished state to be published to `channel` too, and return its current state.
-- For a waiter that did not send the task itself. KEYS: one key of the queue (for routing).
-- ARGV: queue (packed keys), sched_channel, id, channel, max_watchers.
-- The record's `r` is the sender's channel ('' if none) followed by one ' <channel>' per watcher;
-- at most max_watchers are added (a waiter beyond them re-reads the state now and then instead).
local q = queue_ready(ARGV[1])
local rk = q.record .. ARGV[3]
local channels = redis.call('HGET', rk, 'r')
if channels then
  if not string.find(' ' .. channels .. ' ', ' ' .. ARGV[4] .. ' ', 1, true) then
    local _, watchers = string.gsub(channels, ' ', ' ')
    if watchers < tonumber(ARGV[5]) then
      redis.call('HSET', rk, 'r', channels .. ' ' .. ARGV[4])
    end
  end
end
return current_state(q, ARGV[3])
