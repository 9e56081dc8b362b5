-- Cancel tasks by id, if they have not started: a waiting one leaves the delayed/ready/parked
-- sets; one not enqueued yet (a later chain link, a chord callback) is blocked in advance. Both
-- get a tombstone (claim, promote and enqueue skip a tombstoned id, so a copy racing through
-- promotion never runs) and the state CANCELED. A running task (leased) or a finished one is
-- left alone.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, write_states (0/1), ttl, ids...
-- Returns one flag per id: 1 canceled, 0 too late (running or finished).
local q = queue_from(ARGV[1])
local write_states, ttl = ARGV[3] == '1', tonumber(ARGV[4])
local pubs = {}
local out = {}

local function finished(id)
  local state = redis.call('GET', q.state .. id)
  return state and (string.find(state, '"state":"SUCCESS"', 1, true)
    or string.find(state, '"state":"FAILURE"', 1, true))
end

for i = 5, #ARGV do
  local id = ARGV[i]
  local rk = q.record .. id
  local r = redis.call('HMGET', rk, 'n', 'r')
  if redis.call('ZSCORE', q.leases, id) or (not r[1] and finished(id)) then
    out[#out + 1] = 0
  else
    redis.call('SET', q.tombstone .. id, '1', 'EX', ttl)
    redis.call('SET', q.canceling, '1', 'EX', ttl) -- outlives every tombstone set so far
    if r[1] then
      redis.call('ZREM', q.delayed, id)
      redis.call('ZREM', q.ready, id)
      redis.call('ZREM', q.parked_prefix .. r[1], id)
      redis.call('DEL', rk)
    end
    if write_states then
      store_state(q, pubs, id, state_json(id, 'CANCELED', r[1] or ''), r[2], ttl)
    end
    out[#out + 1] = 1
  end
end
publish_replies(pubs)
return out
