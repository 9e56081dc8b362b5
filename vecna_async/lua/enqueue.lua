-- Enqueue a batch of messages into one queue.
-- KEYS: the queue's keys. ARGV: queue, sched_channel, request_id, request_ttl, state_ttl,
--   then per message: id, name, body, priority, due_ms (0 = now), ignore (0/1), reply, pending_state
-- The request id makes a resent call (redis-py retries after a timeout, or another scheduler
-- firing the same periodic tick) a no-op.
local q = queue_keys(KEYS, 0)
if not redis.call('SET', q.request .. ARGV[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return -1
end
local now = now_ms()
local ttl = ARGV[5]
local count = 0
local earliest = nil
for i = 6, #ARGV, 8 do
  local r = enqueue(q, now, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4],
    ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ttl)
  if r > 0 then
    count = count + 1
  end
  if r == 3 then
    local due = tonumber(ARGV[i + 4])
    if not earliest or due < earliest then
      earliest = due
    end
  end
end
if earliest then
  announce_due(ARGV[2], ARGV[1], earliest)
end
return count
