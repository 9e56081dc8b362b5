-- A worker that stops gracefully leaves the worker registry at once (see presence_beat.lua).
-- KEYS: workers_index. ARGV: worker_prefix, name.
redis.call('ZREM', KEYS[1], ARGV[2])
return redis.call('DEL', ARGV[1] .. ARGV[2])
