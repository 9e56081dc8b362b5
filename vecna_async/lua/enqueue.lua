-- Enqueue a batch of messages into one queue.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, request_id, request_ttl, state_ttl, and the
--   messages as one msgpack-encoded flat array, per message: id, name, body, priority,
--   due_ms (0 = now), ignore (0/1), reply, pending_state
-- The request id makes a resent call (redis-py retries after a timeout, or another scheduler
-- firing the same periodic tick) a no-op.
local q = queue_ready(ARGV[1])
if not redis.call('SET', q.request .. ARGV[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return -1
end
local now = now_ms()
local ttl = ARGV[5]
local count = 0
local earliest = nil
local M = cmsgpack.unpack(ARGV[6])
local ctx = call_context(q)
local seq = redis.call('INCRBY', q.seq, #M / 8) - #M / 8 -- FIFO numbers for the whole batch
for i = 1, #M, 8 do
  seq = seq + 1
  local r = enqueue(q, ctx, now, M[i], M[i + 1], M[i + 2], M[i + 3], M[i + 4], M[i + 5],
    M[i + 6], M[i + 7], ttl, seq)
  if r > 0 then
    count = count + 1
  end
  if r == 3 then
    local due = tonumber(M[i + 4])
    if not earliest or due < earliest then
      earliest = due
    end
  end
end
if earliest then
  announce_due(ARGV[2], q.name, earliest)
end
return count
