-- Enqueue one chunk of a periodic tick's messages into one queue, unless this queue already got
-- that chunk of this tick or of a later one: the compare of the tick and the enqueue are one
-- atomic step, so however many schedulers fire a tick (or one retries it), it is enqueued once.
-- One HASH per code and queue (keys.py: fired:<code>) holds the last tick of each chunk, instead
-- of a request key per tick.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, code, chunk,
--   tick_ms, fired_ttl (s), state_ttl, and the messages (see enqueue_batch in _lib.lua).
-- Returns how many messages were new, or -1 if the tick was enqueued here before.
local q = queue_ready(ARGV[1])
local code, chunk, tick = ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = q.fired .. code
local last = redis.call('HGET', key, chunk)
if last and tonumber(last) >= tick then
  return -1
end
-- The request key a 0.2 scheduler left for the same firing (read only, until they expire).
if redis.call('EXISTS', q.request .. 'periodic:' .. code .. ':' .. ARGV[5] .. ':' .. chunk) == 1 then
  return -1
end
redis.call('HSET', key, chunk, ARGV[5])
redis.call('EXPIRE', key, tonumber(ARGV[6]))
return enqueue_batch(q, ARGV[2], ARGV[7], ARGV[8])
