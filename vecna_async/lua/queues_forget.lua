-- Forget a queue in the known-queues set unless its entry was refreshed since it was read
-- (compare-and-delete). KEYS: the known-queues key. ARGV: queue, the score read.
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
