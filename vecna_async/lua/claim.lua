-- Claim up to max_n ready messages for one worker, each with a lease (deadline + a token of its
-- own: this call's nonce and the message's place in the reply, so no two deliveries ever share a
-- token, whatever retries, releases or re-claims of the same id come between).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, nonce,
--   request_id, max_n, lease_ms, max_deliveries, write_states (0/1), state_ttl, reap_limit,
--   resend_window (s: how long this call's reply is remembered), max_step_ms (lease clock),
--   dead_max, dead_max_age_ms, parked_max_age_ms, worker (the claiming worker's name, '' if
--   none: recorded on each leased record for the inspection API), then the task names.
-- Returns a flat list: id, body, deliveries, flag, token per message: flag '' (claimed),
-- 'unregistered' (claimed to fail it), or 'dead:<reason>' (a dead letter whose aftermath is to be
-- settled; its token is '').
-- Messages of names this worker does not know are parked for a worker that knows them, unless
-- they ask to fail when unregistered. Expired leases are reaped first, so any live worker
-- redelivers the messages of a dead one.
local q = queue_ready(ARGV[1])
local nonce, request_id = ARGV[3], ARGV[4]
local max_n, lease_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_deliveries, write_states = tonumber(ARGV[7]), ARGV[8] == '1'
local ttl, reap_limit = tonumber(ARGV[9]), tonumber(ARGV[10])
local resend_window, max_step = tonumber(ARGV[11]), tonumber(ARGV[12])
local dead_max, dead_max_age = tonumber(ARGV[13]), tonumber(ARGV[14])
local parked_max_age, worker = tonumber(ARGV[15]), ARGV[16]
local known = {}
for i = 17, #ARGV do
  known[ARGV[i]] = true
end
local out = {}

local function flag(name)
  return known[name] and '' or 'unregistered'
end

-- A resent call returns what the first one claimed and still holds.
local previous = previous_reply(q, request_id)
if previous then
  for id, token in string.gmatch(previous, '(%S+) (%S+)') do
    local r = redis.call('HMGET', q.record .. id, 'o', 'b', 'd', 'n')
    if r[1] == token then
      out[#out + 1] = id
      out[#out + 1] = r[2]
      out[#out + 1] = r[3]
      out[#out + 1] = flag(r[4])
      out[#out + 1] = token
    end
  end
  return out
end

local now = now_ms()
local lease_now = lease_clock(q, now, max_step)
local pubs = {}
reap_expired(q, now, lease_now, reap_limit, max_deliveries, ttl, pubs, write_states)

-- Parked retention: a message parked for parked_max_age (no worker that knows its task has
-- claimed from this queue since) becomes a dead letter, whose aftermath the loop below hands out
-- like any other's. Before that loop, so this very claim settles it. At most 100 per call. An
-- entry whose message left the parked set otherwise (canceled) is just dropped.
local overdue = redis.call('ZRANGEBYSCORE', q.parked_since, '-inf', now - parked_max_age,
  'LIMIT', 0, 100)
for _, id in ipairs(overdue) do
  redis.call('ZREM', q.parked_since, id)
  local name = redis.call('HGET', q.record .. id, 'n')
  if name and redis.call('ZREM', q.parked_prefix .. name, id) == 1 then
    if redis.call('EXISTS', q.parked_prefix .. name) == 0 then
      redis.call('SREM', q.parked, name)
    end
    local reason = 'no worker for task ' .. name .. ' within ' .. math.floor(parked_max_age / 1000)
      .. ' s (parked: the workers that claimed it do not register it)'
    dead_letter(q, now, id, reason, nil, ttl, pubs, write_states)
    redis.call('ZADD', q.dead_pending, now, id) -- a worker settles what follows from it
  end
end

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

-- Dead-letter retention: the oldest beyond dead_max, and any older than dead_max_age, go (not
-- those whose aftermath is still to be settled). At most 100 per call: the work stays bounded.
local function drop_dead(ids)
  for _, id in ipairs(ids) do
    if not redis.call('ZSCORE', q.dead_pending, id) then
      redis.call('ZREM', q.dead, id)
      redis.call('DEL', q.record .. id)
    end
  end
end
local dead_count = redis.call('ZCARD', q.dead)
if dead_count > 0 then
  drop_dead(redis.call('ZRANGEBYSCORE', q.dead, '-inf', now - dead_max_age, 'LIMIT', 0, 100))
  local excess = dead_count - dead_max
  if excess > 0 then
    drop_dead(redis.call('ZRANGE', q.dead, 0, math.min(excess, 100) - 1))
  end
end

-- Tasks held back by their limits whose time to try again has come (a rate window moved on, or
-- the safety net for a concurrency limit): back to ready, as many as may start.
for _, name in ipairs(redis.call('ZRANGEBYSCORE', q.held_due, '-inf', now, 'LIMIT', 0, 20)) do
  if limits_release(q, name) then
    redis.call('ZADD', q.held_due, now + lease_ms, name) -- still full: look again later
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
        redis.call('ZREM', q.parked_since, items[i])
      end
      if redis.call('EXISTS', pk) == 0 then
        redis.call('SREM', q.parked, name)
      end
    end
  end
end

local ctx = call_context(q)
local claimed = {} -- "id token" pairs, remembered for a resent call
local leases = {} -- deadline, id pairs: one ZADD for the whole batch
local deadline = lease_now + lease_ms
local rounds = 0
while #leases / 2 < max_n and rounds < 8 do
  rounds = rounds + 1
  local popped = redis.call('ZPOPMIN', q.ready, max_n - #leases / 2)
  if #popped == 0 then
    break
  end
  for i = 1, #popped, 2 do
    local id, score = popped[i], popped[i + 1]
    local rk = q.record .. id
    local r = redis.call('HMGET', rk, 'n', 'b', 'i', 'r', 'd', 'l')
    local name = r[1]
    if name and canceled(q, ctx, id) then
      -- canceled while it waited (a cancel racing with promotion): it never runs
      redis.call('DEL', rk)
      if write_states then
        store_state(q, pubs, id, state_json(id, 'CANCELED', name), r[4], ttl)
      end
      settle_tombstone(q, id, now, ttl)
    elseif name then
      local token = nonce .. '.' .. (#leases / 2 + 1)
      local allowed, retry_at = true, nil
      if r[6] and known[name] then
        allowed, retry_at = limits_take(q, name, r[6], id, token, now)
      end
      if not allowed then
        limits_hold(q, name, r[6], id, score, retry_at or (now + lease_ms))
      elseif known[name] or r[3] == '1' then
        local d = tonumber(r[5] or 0) + 1
        -- w, c: who holds it and since when, for the inspection API (same HSET: no extra call)
        redis.call('HSET', rk, 'd', d, 'o', token, 'w', worker, 'c', now)
        leases[#leases + 1] = deadline
        leases[#leases + 1] = id
        claimed[#claimed + 1] = id .. ' ' .. token
        out[#out + 1] = id
        out[#out + 1] = r[2]
        out[#out + 1] = d
        out[#out + 1] = flag(name)
        out[#out + 1] = token
      else
        redis.call('ZADD', q.parked_prefix .. name, score, id)
        redis.call('ZADD', q.parked_since, 'NX', now, id)
        redis.call('SADD', q.parked, name)
      end
    end
  end
end
if #leases > 0 then
  redis.call('ZADD', q.leases, unpack(leases))
  remember_reply(q, request_id, table.concat(claimed, ' '), resend_window)
end
if redis.call('ZCARD', q.ready) > 0 then
  wake(q, ctx) -- more work than this worker took: let the next idle one know
end
publish_replies(pubs)
return out
