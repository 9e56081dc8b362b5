-- Cancel tasks by id: each gets a tombstone (so a copy racing through promotion, a retry or a
-- follow-up enqueue never runs), leaves the delayed/ready/parked sets, and its state becomes
-- CANCELED. A task already claimed by a worker is running and is left alone.
-- KEYS: the queue's keys. ARGV: queue, sched_channel, write_states (0/1), ttl, ids...
-- Returns one flag per id: 1 canceled, 0 running (too late).
local q = queue_keys(KEYS, 0)
local write_states, ttl = ARGV[3] == '1', tonumber(ARGV[4])
local pubs = {}
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local rk = q.record .. id
  redis.call('SET', q.tombstone .. id, '1', 'EX', ttl)
  if redis.call('ZSCORE', q.leases, id) then
    out[#out + 1] = 0
  else
    local r = redis.call('HMGET', rk, 'n', 'r')
    redis.call('ZREM', q.delayed, id)
    redis.call('ZREM', q.ready, id)
    if r[1] then
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
