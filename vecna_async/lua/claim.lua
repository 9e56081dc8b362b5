-- Claim up to max_n ready messages for one worker, each with a lease (deadline + owner token).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, token, request_id, max_n, lease_ms,
--   max_deliveries, write_states (0/1), state_ttl, reap_limit, session, idle_ttl_ms,
--   resend_window (s: how long this call's request id is remembered), then the task names.
-- Returns a flat list: id, body, deliveries, flag, token per message: flag '' (claimed),
-- 'unregistered' (claimed to fail it), or 'dead:<reason>' (a dead letter whose aftermath is to be
-- settled); token '' means this call's token.
-- Messages of names this worker does not know are parked for a worker that knows them, unless
-- they ask to fail when unregistered. Expired leases are reaped first, so any live worker
-- redelivers the messages of a dead one. With a session, the worker is idle-registered while it
-- claims nothing: it takes back what was handed to its inbox meanwhile, and if this claim leaves
-- slots free it registers them, so enqueue hands it the next messages directly (see hand_to_idle).
local q = queue_from(ARGV[1])
local token, request_id = ARGV[3], ARGV[4]
local max_n, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_deliveries, write_states = tonumber(ARGV[7]), ARGV[8] == '1'
local ttl, reap_limit = tonumber(ARGV[9]), tonumber(ARGV[10])
local session, idle_ttl, resend_window = ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
local known = {}
for i = 14, #ARGV do
  known[ARGV[i]] = true
end
local out = {}
local req = q.request .. request_id

local function flag(name)
  return known[name] and '' or 'unregistered'
end

-- A resent call returns what the first one claimed and still holds.
local previous = redis.call('GET', req)
if previous then
  for id in string.gmatch(previous, '%S+') do
    local r = redis.call('HMGET', q.record .. id, 'o', 'b', 'd', 'n')
    if r[1] == token then
      out[#out + 1] = id
      out[#out + 1] = r[2]
      out[#out + 1] = r[3]
      out[#out + 1] = flag(r[4])
      out[#out + 1] = ''
    end
  end
  return out
end

local now = now_ms()
local pubs = {}
local taken = 0 -- messages this call returns that use up slots
if session ~= '' then
  redis.call('HDEL', q.idle, session)
  redis.call('LREM', q.idle_order, 0, session)
  local inbox = q.inbox .. session
  for _, entry in ipairs(redis.call('LRANGE', inbox, 0, -1)) do
    local d, id, body = string.match(entry, '^(%d+) (%S+) (.*)$')
    local lease_token = session .. '/' .. d
    if redis.call('HGET', q.record .. id, 'o') == lease_token then
      out[#out + 1] = id
      out[#out + 1] = body
      out[#out + 1] = d
      out[#out + 1] = ''
      out[#out + 1] = lease_token
      taken = taken + 1
    end
  end
  redis.call('DEL', inbox)
end
reap_expired(q, now, reap_limit, max_deliveries, ttl, pubs, write_states)
-- Dead letters whose aftermath (on_error callbacks, a stopped chain, a failed chord; the FAILURE
-- state on a separate backend) no worker has settled yet: offered again after a lease period if
-- the worker that took them dies first; the settle applies each once.
for _, id in ipairs(redis.call('ZRANGEBYSCORE', q.dead_pending, '-inf', now, 'LIMIT', 0, 100)) do
  local r = redis.call('HMGET', q.record .. id, 'b', 'd', 'e')
  if r[1] then
    redis.call('ZADD', q.dead_pending, now + lease_ms, id)
    out[#out + 1] = id
    out[#out + 1] = r[1]
    out[#out + 1] = r[2]
    out[#out + 1] = 'dead:' .. (r[3] or '')
    out[#out + 1] = ''
  else
    redis.call('ZREM', q.dead_pending, id)
  end
end

if redis.call('SCARD', q.parked) > 0 then
  for _, name in ipairs(redis.call('SMEMBERS', q.parked)) do
    if known[name] then
      local pk = q.parked_prefix .. name
      local items = redis.call('ZRANGE', pk, 0, 999, 'WITHSCORES')
      for i = 1, #items, 2 do
        redis.call('ZADD', q.ready, items[i + 1], items[i])
        redis.call('ZREM', pk, items[i])
      end
      if redis.call('EXISTS', pk) == 0 then
        redis.call('SREM', q.parked, name)
      end
    end
  end
end

local ctx = call_context(q)
local claimed = {}
local leases = {} -- deadline, id pairs: one ZADD for the whole batch
local deadline = now + lease_ms
local rounds = 0
while taken + #claimed < max_n and rounds < 8 do
  rounds = rounds + 1
  local popped = redis.call('ZPOPMIN', q.ready, max_n - taken - #claimed)
  if #popped == 0 then
    break
  end
  for i = 1, #popped, 2 do
    local id, score = popped[i], popped[i + 1]
    local rk = q.record .. id
    local r = redis.call('HMGET', rk, 'n', 'b', 'i', 'r', 'd')
    local name = r[1]
    if name and canceled(q, ctx, id) then
      -- canceled while it waited (a cancel racing with promotion): it never runs
      redis.call('DEL', rk)
      if write_states then
        store_state(q, pubs, id, state_json(id, 'CANCELED', name), r[4], ttl)
      end
    elseif name then
      if known[name] or r[3] == '1' then
        local d = tonumber(r[5] or 0) + 1
        redis.call('HSET', rk, 'd', d, 'o', token)
        leases[#leases + 1] = deadline
        leases[#leases + 1] = id
        claimed[#claimed + 1] = id
        out[#out + 1] = id
        out[#out + 1] = r[2]
        out[#out + 1] = d
        out[#out + 1] = flag(name)
        out[#out + 1] = ''
      else
        redis.call('ZADD', q.parked_prefix .. name, score, id)
        redis.call('SADD', q.parked, name)
      end
    end
  end
end
if #claimed > 0 then
  redis.call('ZADD', q.leases, unpack(leases))
  redis.call('SET', req, table.concat(claimed, ' '), 'EX', resend_window)
end
if redis.call('ZCARD', q.ready) > 0 then
  wake(q) -- more work than this worker took: let the next idle one know
elseif session ~= '' and taken + #claimed < max_n then
  redis.call('HSET', q.idle, session,
    (max_n - taken - #claimed) .. ' ' .. lease_ms .. ' ' .. (now + idle_ttl))
  redis.call('RPUSH', q.idle_order, session)
end
publish_replies(pubs)
return out
