-- With a separate result backend (run on it): ask for a task's final state to be published to
-- `channel`, and return its stored state. In one script, so a final state stored in between
-- cannot be missed: backend_store.lua either sees the channel or stored the state this reads.
-- Nothing is added once the state is final, nor beyond max_watchers channels (that waiter then
-- re-reads the state now and then instead).
-- KEYS: the state key, the watchers key. ARGV: channel, max_watchers, ttl.
local stored = redis.call('GET', KEYS[1])
if stored and is_final(stored) then
  return stored
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0
    and redis.call('SCARD', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return stored
