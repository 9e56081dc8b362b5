-- Move due entries of the delayed set to ready, at most `limit` per call.
-- KEYS: the queue's keys. ARGV: queue, sched_channel, limit.
-- Returns {moved, now_ms, next_due_ms or -1}; time is Redis's, so schedulers on skewed hosts agree.
local q = queue_keys(KEYS, 0)
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
for _, id in ipairs(due) do
  redis.call('ZREM', q.delayed, id)
  local p = redis.call('HGET', q.record .. id, 'p')
  if p and redis.call('EXISTS', q.tombstone .. id) == 1 then
    redis.call('DEL', q.record .. id) -- canceled: its state was set by cancel.lua
  elseif p then
    redis.call('ZADD', q.ready, p, id)
    moved = moved + 1
  end
end
if moved > 0 then
  wake(q)
end
local nxt = redis.call('ZRANGE', q.delayed, 0, 0, 'WITHSCORES')
return {moved, now, tonumber(nxt[2] or -1)}
