-- Enqueue a batch of messages into one queue.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, request_id,
--   request_ttl, state_ttl, and the messages as one msgpack-encoded flat array (see
--   enqueue_batch in _lib.lua).
-- The request id makes a resent call (redis-py retries after a timeout) a no-op.
local q = queue_ready(ARGV[1])
if not redis.call('SET', q.request .. ARGV[3], '1', 'NX', 'EX', tonumber(ARGV[4])) then
  return -1
end
return enqueue_batch(q, ARGV[2], ARGV[5], ARGV[6])
