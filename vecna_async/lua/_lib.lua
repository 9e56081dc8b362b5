-- Shared helpers; vecna_async.scripts prepends this file to every script.
-- Key names come from vecna_async/keys.py, packed per queue (see queue_from) in ARGV[1] and,
-- for other queues a script touches, in later arguments. Ids, queue and task names are restricted
-- to JSON-safe characters (keys.check_name), which is what lets state_json() below build JSON by
-- concatenation.

local PRIORITY_WEIGHT = 1099511627776 -- 2^40: one priority step outweighs any FIFO sequence number

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A queue's keys and name, from one msgpack array (keys.QueueKeys: the keys in QueueKeys
-- order, then the queue's name). One argument instead of 27 saves redis-py packing them per call;
-- KEYS carries just one of them, so Redis Cluster routes the call to the queue's slot.
local function queue_from(packed)
  local list = cmsgpack.unpack(packed)
  return {
    ready = list[1], delayed = list[2], leases = list[3], dead = list[4],
    wake = list[5], seq = list[6], record = list[7], state = list[8],
    parked = list[9], parked_prefix = list[10], request = list[11],
    tombstones = list[12], chord = list[13], dead_pending = list[14],
    clock = list[15], probe_a = list[16], probe_b = list[17],
    legacy_tombstone = list[18], legacy_canceling = list[19],
    limit = list[20], held = list[21], held_due = list[22], limit_specs = list[23],
    progress = list[24], watchers = list[25], parked_since = list[26], fired = list[27],
    name = list[28],
  }
end

-- Before its first write, every script makes sure the queue's slot is not moving between Redis
-- Cluster nodes. Scripts read keys they only learn of as they go (the ids popped from a set),
-- and a key already migrated would fail the call halfway through, after some writes. A
-- two-key read of keys that never exist fails on both nodes while the slot migrates (the source
-- answers ASK, the target TRYAGAIN), so the call answers TRYAGAIN having changed nothing, and
-- the client retries it once the slot has settled. Outside a Cluster it is one cheap read.
local function assert_slot_stable(a, b)
  local probe = redis.pcall('EXISTS', a, b)
  if type(probe) == 'table' and probe.err then
    error(redis.error_reply('TRYAGAIN the slot of ' .. a .. ' is migrating; nothing was changed'))
  end
end

local function queue_ready(packed)
  local q = queue_from(packed)
  assert_slot_stable(q.probe_a, q.probe_b)
  return q
end

-- The queue's lease clock (ms): Redis's time, except that a jump since the last claim or
-- heartbeat counts as at most max_step. A Redis that was stopped, hung or restarted, or a new
-- master whose clock runs ahead, would otherwise make every lease look expired at once though
-- their workers are alive and heartbeating again: their leases keep the time they had left,
-- less max_step (callers make max_step shorter than what a heartbeat leaves on a lease). While
-- workers are calling, the clock runs with Redis's; a clock set back does not move it back.
local function lease_clock(q, real, max_step)
  local stored = redis.call('GET', q.clock)
  local lease = real
  if stored then
    local last_real, last_lease = string.match(stored, '^(%d+) (%d+)$')
    local step = real - tonumber(last_real)
    if step < 0 then
      step = 0
    elseif step > max_step then
      step = max_step
    end
    lease = tonumber(last_lease) + step
  end
  redis.call('SET', q.clock, real .. ' ' .. lease)
  return lease
end

-- Per script call: whether the queue has tombstones at all (checked once, so the hot path pays
-- nothing per message), and whether a wake-up token was pushed (true for the rest of the call).
local function call_context(q)
  return {
    tombs = redis.call('ZCARD', q.tombstones) > 0,
    legacy = redis.call('EXISTS', q.legacy_canceling) == 1,
    woken = false,
  }
end

local function canceled(q, ctx, id)
  return (ctx.tombs and redis.call('ZSCORE', q.tombstones, id))
    or (ctx.legacy and redis.call('EXISTS', q.legacy_tombstone .. id) == 1)
end

-- A tombstone that waited for its id to be enqueued (+inf) now lives only as long as results do:
-- the id was met (enqueued and canceled), or can no longer come (its chain stopped, its chord
-- failed, its predecessor was canceled). XX: only where one exists.
local function settle_tombstone(q, id, now, ttl)
  redis.call('ZADD', q.tombstones, 'XX', 'LT', now + ttl * 1000, id)
end

-- One wake-up token for an idle worker (BLPOP). Only ever a hint: workers also poll.
local function wake(q, ctx)
  if ctx and ctx.woken then
    return
  end
  if redis.call('LLEN', q.wake) == 0 then
    redis.call('RPUSH', q.wake, '1')
  end
  if ctx then
    ctx.woken = true
  end
end

local function state_json(id, state, name, err)
  local s = '{"task_id":"' .. id .. '","state":"' .. state .. '","task_name":"' .. name .. '"'
  if err then
    s = s .. ',"error":"' .. err .. '"'
  end
  return s .. '}'
end

-- Finished states to publish, grouped by reply channel: one PUBLISH per channel per script call.
local function note_reply(pubs, channels, id, state)
  if not channels or channels == '' then
    return
  end
  local line = id .. '\t' .. (string.len(state) <= 65536 and state or '') .. '\n'
  for ch in string.gmatch(channels, '%S+') do
    local lines = pubs[ch]
    if not lines then
      lines = {}
      pubs[ch] = lines
    end
    lines[#lines + 1] = line
  end
end

local function publish_replies(pubs)
  for ch, lines in pairs(pubs) do
    redis.call('PUBLISH', ch, table.concat(lines))
  end
end

local function state_name(state)
  return state and string.match(state, '"state":"(%u+)"')
end

local FINAL = { SUCCESS = true, FAILURE = true, CANCELED = true }

local function is_final(state)
  return FINAL[state_name(state)] == true
end

-- A task's state. Final states (and STARTED, RETRY) are stored; PENDING and RECEIVED are what its
-- message record says (waiting, or leased to a worker), so the hot path writes neither.
local function current_state(q, id)
  local stored = redis.call('GET', q.state .. id)
  local kind = state_name(stored)
  if FINAL[kind] then
    return stored
  end
  local r = redis.call('HMGET', q.record .. id, 'n', 'o')
  if not r[1] then
    return stored
  end
  if r[2] then
    return kind == 'STARTED' and stored or state_json(id, 'RECEIVED', r[1])
  end
  return kind == 'RETRY' and stored or state_json(id, 'PENDING', r[1])
end

-- Store a state and queue its publication to the reply channels.
local function store_state(q, pubs, id, state, reply, ttl)
  redis.call('SET', q.state .. id, state, 'EX', ttl)
  note_reply(pubs, reply, id, state)
end

-- Limits across all workers (a task's concurrency_limit and rate_limit), kept in the record's
-- 'l' field as "c=<n>;r=<count>/<period ms>" (either part optional). They are enforced here, where
-- messages are claimed: a message over its limit is held aside (its task's held set, in order)
-- instead of claimed, so it never holds up other tasks; it goes back to ready when a delivery of
-- its task ends (concurrency) or when its rate window has room again (held_due, checked by every
-- claim), and is checked again then.
local function parse_limits(l)
  local c = tonumber(string.match(l, 'c=(%d+)'))
  local count, period = string.match(l, 'r=(%d+)/(%d+)')
  return c, tonumber(count), tonumber(period)
end

-- Whether a delivery of `name` may start now; if so it is counted (the caller leases it).
-- Otherwise returns false and, for a rate limit, when there will be room (epoch ms).
local function limits_take(q, name, l, id, token, now)
  local c, count, period = parse_limits(l)
  local ck, rk = q.limit .. 'c:' .. name, q.limit .. 'r:' .. name
  if c and redis.call('ZCARD', ck) >= c then
    return false, nil
  end
  if count then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - period)
    if redis.call('ZCARD', rk) >= count then
      local oldest = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      return false, tonumber(oldest[2]) + period
    end
    redis.call('ZADD', rk, now, token)
    redis.call('PEXPIRE', rk, period)
  end
  if c then
    redis.call('ZADD', ck, 0, id)
  end
  return true, nil
end

-- Hold a message back for its limit; `retry_at` (epoch ms) when a rate window frees up, else a
-- lease period from now (a safety net: a delivery's end releases held messages at once).
local function limits_hold(q, name, l, id, score, retry_at)
  redis.call('ZADD', q.held .. name, score, id)
  redis.call('HSET', q.limit_specs, name, l)
  redis.call('ZADD', q.held_due, 'LT', retry_at, name)
end

-- Held messages of `name` go back to ready: as many as its limits may let start (the claim
-- checks each again), at most 100 at a time.
-- Returns whether some are still held.
local function limits_release(q, name)
  local hk = q.held .. name
  local l = redis.call('HGET', q.limit_specs, name) or ''
  local c, count = parse_limits(l)
  local room = 100
  if c then
    room = math.min(room, c - redis.call('ZCARD', q.limit .. 'c:' .. name))
  end
  if count then
    room = math.min(room, count)
  end
  if room <= 0 then
    return redis.call('EXISTS', hk) == 1
  end
  local items = redis.call('ZPOPMIN', hk, room)
  for i = 1, #items, 2 do
    redis.call('ZADD', q.ready, items[i + 1], items[i])
  end
  if #items > 0 then
    wake(q)
  end
  if redis.call('EXISTS', hk) == 0 then
    redis.call('ZREM', q.held_due, name)
    return false
  end
  return true
end

-- The token of a delivery whose outcome was not applied (settle) or whose lease is lost
-- (heartbeat): 'gone:' .. token if its message no longer exists at all and no state says another
-- delivery finished it (Redis lost its data: restarted without persistence).
local function lost_token(q, id, token)
  if redis.call('EXISTS', q.record .. id) == 0 and redis.call('EXISTS', q.state .. id) == 0 then
    return 'gone:' .. token
  end
  return token
end

-- A delivery of a limited task ended (settled, released, reaped): its concurrency share is free.
local function limits_end(q, id, name, l)
  if l and name and string.find(l, 'c=', 1, true) then
    redis.call('ZREM', q.limit .. 'c:' .. name, id)
    if redis.call('EXISTS', q.held .. name) == 1 then
      limits_release(q, name)
    end
  end
end

-- A message is ready: into the ready set, with a wake-up for an idle worker.
local function make_ready(q, ctx, id, score)
  redis.call('ZADD', q.ready, score, id)
  wake(q, ctx)
end

-- Enqueue one message unless its id is queued already, or (states living here) finished and its
-- result still kept: an id is an idempotency key, so a resent send (a producer retrying after an
-- error, a late periodic firing) neither runs twice nor turns SUCCESS back into PENDING.
-- Returns 0 skipped, 1 ready, 2 delayed, 3 delayed and now the earliest entry of the delayed set.
-- A canceled id (tombstone) is not enqueued: its state becomes CANCELED instead. `write` ('1'
-- or '') says whether states live here; PENDING is not stored: current_state derives it.
local function enqueue(q, ctx, now, id, name, body, priority, due, ignore, reply, write, ttl, seq)
  local rk = q.record .. id
  if redis.call('EXISTS', rk) == 1 then
    return 0
  end
  if write ~= '' and is_final(redis.call('GET', q.state .. id)) then
    return 0
  end
  if canceled(q, ctx, id) then
    if write ~= '' then
      redis.call('SET', q.state .. id, state_json(id, 'CANCELED', name), 'EX', ttl)
    end
    settle_tombstone(q, id, now, ttl)
    return 0
  end
  local score = (seq or redis.call('INCR', q.seq)) - tonumber(priority) * PRIORITY_WEIGHT
  -- `ignore` is the flag ('0'/'1'), followed by the task's limits if it has any
  local limits = string.sub(ignore, 2)
  ignore = string.sub(ignore, 1, 1)
  if limits ~= '' then
    redis.call('HSET', rk, 'b', body, 'n', name, 'p', score, 'd', 0, 'i', ignore, 'r', reply,
      'l', limits)
  else
    redis.call('HSET', rk, 'b', body, 'n', name, 'p', score, 'd', 0, 'i', ignore, 'r', reply)
  end
  due = tonumber(due)
  if due > now then
    redis.call('ZADD', q.delayed, due, id)
    local first = redis.call('ZRANGE', q.delayed, 0, 0)
    if first[1] == id then
      return 3
    end
    return 2
  end
  make_ready(q, ctx, id, score)
  return 1
end

-- Tell sleeping schedulers that a delayed entry is due earlier than they may think.
local function announce_due(channel, queue, due)
  redis.call('PUBLISH', channel, queue .. ' ' .. due)
end

-- Enqueue a batch of messages into one queue: M is the msgpack-encoded flat array, per message
-- id, name, body, priority, due_ms (0 = now), ignore (0/1), reply, write_states. Returns how
-- many were new (see enqueue).
local function enqueue_batch(q, channel, ttl, packed)
  local now = now_ms()
  local count = 0
  local earliest = nil
  local M = cmsgpack.unpack(packed)
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
    announce_due(channel, q.name, earliest)
  end
  return count
end

-- Mark a message dead: out of every queue structure, kept in the dead set with its reason, and
-- its task FAILED so nobody waits for it.
-- `state` is the FAILURE state to store, or nil to build one here (reason must then be JSON-safe).
local function dead_letter(q, now, id, reason, state, ttl, pubs, write_states)
  local rk = q.record .. id
  local r = redis.call('HMGET', rk, 'n', 'r')
  redis.call('HDEL', rk, 'o')
  redis.call('HSET', rk, 'e', reason, 't', now)
  redis.call('ZADD', q.dead, now, id)
  if write_states then
    state = state or state_json(id, 'FAILURE', r[1] or '', 'dead-lettered: ' .. reason)
    redis.call('SET', q.state .. id, state, 'EX', ttl)
    note_reply(pubs, r[2], id, state)
  end
end

-- Leases past their deadline (on the lease clock) go back to ready, or to the dead set after
-- max_deliveries. `now` is Redis's time, for the dead set.
local function reap_expired(q, now, lease_now, limit, max_deliveries, ttl, pubs, write_states)
  local expired = redis.call('ZRANGEBYSCORE', q.leases, '-inf', lease_now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    redis.call('ZREM', q.leases, id)
    local rk = q.record .. id
    local r = redis.call('HMGET', rk, 'd', 'p', 'n', 'l')
    if r[2] then
      limits_end(q, id, r[3], r[4])
      local d = tonumber(r[1] or 0)
      if d >= max_deliveries then
        local reason = 'delivered ' .. d .. ' times and every lease expired without an ack'
          .. ' (the task keeps killing or stalling its worker?)'
        dead_letter(q, now, id, reason, nil, ttl, pubs, write_states)
        redis.call('ZADD', q.dead_pending, now, id) -- a worker settles what follows from it
      else
        redis.call('HDEL', rk, 'o')
        redis.call('ZADD', q.ready, r[2], id)
      end
    end
  end
  if #expired > 0 then
    wake(q)
  end
end

-- A call's request id (redis-py, or our own one retry, may resend a call whose reply was lost):
-- the reply of the first run, or nil. remember_reply stores it (a string) for `window` seconds.
local function previous_reply(q, request_id)
  if request_id == '' then
    return nil
  end
  return redis.call('GET', q.request .. request_id)
end

local function remember_reply(q, request_id, reply, window)
  if request_id ~= '' then
    redis.call('SET', q.request .. request_id, reply, 'EX', window)
  end
end
