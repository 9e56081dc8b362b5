-- Shared helpers; vecna_async.scripts prepends this file to every script.
-- Key names come from vecna_async/keys.py, packed per queue (see queue_from) in ARGV[1] and,
-- for other queues a script touches, in later arguments. Ids, queue and task names are restricted to JSON-safe characters
-- (keys.check_name), which is what lets state_json() below build JSON by concatenation.

local PRIORITY_WEIGHT = 1099511627776 -- 2^40: one priority step outweighs any FIFO sequence number

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A queue's keys and name, from one msgpack array (keys.QueueKeys.packed: the keys in QueueKeys
-- order, then the queue's name). One argument instead of 17 saves redis-py packing them per call;
-- KEYS carries just one of them, so Redis Cluster routes the call to the queue's slot.
local function queue_from(packed)
  local list = cmsgpack.unpack(packed)
  return {
    ready = list[1], delayed = list[2], leases = list[3], dead = list[4],
    wake = list[5], seq = list[6], record = list[7], state = list[8],
    parked = list[9], parked_prefix = list[10], request = list[11],
    tombstone = list[12], chord = list[13], dead_pending = list[14],
    idle = list[15], idle_order = list[16], inbox = list[17], canceling = list[18],
    name = list[19],
  }
end

-- Per script call: whether the queue has live tombstones (checked once), whether the idle list
-- ran dry and whether a wake-up token was pushed (both stay true for the rest of the call).
local function call_context(q)
  return { tombs = redis.call('EXISTS', q.canceling) == 1, no_idle = false, woken = false }
end

local function canceled(q, ctx, id)
  return ctx.tombs and redis.call('EXISTS', q.tombstone .. id) == 1
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

local function is_final(state)
  return string.find(state, '"state":"SUCCESS"', 1, true)
    or string.find(state, '"state":"FAILURE"', 1, true)
    or string.find(state, '"state":"CANCELED"', 1, true)
end

-- A task's state. Final states (and STARTED, RETRY) are stored; PENDING and RECEIVED are what its
-- message record says (waiting, or leased to a worker), so the hot path writes neither.
local function current_state(q, id)
  local stored = redis.call('GET', q.state .. id)
  if stored and is_final(stored) then
    return stored
  end
  local r = redis.call('HMGET', q.record .. id, 'n', 'o')
  if not r[1] then
    return stored
  end
  local kind = stored and string.match(stored, '"state":"(%u+)"')
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

-- Hand a ready message straight to an idle worker (registered by claim.lua when it ran dry),
-- already leased to it, through the worker's inbox list it is blocked on: one round trip to the
-- worker instead of a wake-up and then a claim. A registration whose worker stopped refreshing it
-- is dropped. Returns true if handed over.
local function hand_to_idle(q, ctx, now, id, body)
  if ctx.no_idle then
    return false
  end
  for _ = 1, 4 do
    local session = redis.call('LPOP', q.idle_order)
    if not session then
      ctx.no_idle = true
      return false
    end
    local v = redis.call('HGET', q.idle, session)
    if v then
      local slots, ms, expires = string.match(v, '^(%d+) (%d+) (%d+)$')
      slots, ms = tonumber(slots), tonumber(ms)
      if now <= tonumber(expires) and slots > 0 then
        local rk = q.record .. id
        local d = redis.call('HINCRBY', rk, 'd', 1)
        redis.call('HSET', rk, 'o', session .. '/' .. d) -- a fresh lease token per delivery
        redis.call('ZADD', q.leases, now + ms, id)
        local inbox = q.inbox .. session
        redis.call('RPUSH', inbox, d .. ' ' .. id .. ' ' .. body)
        redis.call('PEXPIRE', inbox, ms)
        if slots > 1 then
          redis.call('HSET', q.idle, session, (slots - 1) .. ' ' .. ms .. ' ' .. expires)
          redis.call('RPUSH', q.idle_order, session)
        else
          redis.call('HDEL', q.idle, session)
        end
        return true
      end
      redis.call('HDEL', q.idle, session)
    end
  end
  return false
end

-- A message is ready: to an idle worker if one waits, else into the ready set with a wake-up.
local function make_ready(q, ctx, now, id, score, body)
  if not hand_to_idle(q, ctx, now, id, body) then
    redis.call('ZADD', q.ready, score, id)
    wake(q, ctx)
  end
end

-- Enqueue one message unless its id is queued already (a resend of the same id is a no-op).
-- Returns 0 skipped, 1 ready, 2 delayed, 3 delayed and now the earliest entry of the delayed set.
-- A canceled id (tombstone) is not enqueued: its state becomes CANCELED instead. `write` ('1'
-- or '') says whether states live here; PENDING is not stored: current_state derives it.
local function enqueue(q, ctx, now, id, name, body, priority, due, ignore, reply, write, ttl, seq)
  local rk = q.record .. id
  if redis.call('EXISTS', rk) == 1 then
    return 0
  end
  if canceled(q, ctx, id) then
    if write ~= '' then
      redis.call('SET', q.state .. id, state_json(id, 'CANCELED', name), 'EX', ttl)
    end
    return 0
  end
  local score = (seq or redis.call('INCR', q.seq)) - tonumber(priority) * PRIORITY_WEIGHT
  redis.call('HSET', rk, 'b', body, 'n', name, 'p', score, 'd', 0, 'i', ignore, 'r', reply)
  due = tonumber(due)
  if due > now then
    redis.call('ZADD', q.delayed, due, id)
    local first = redis.call('ZRANGE', q.delayed, 0, 0)
    if first[1] == id then
      return 3
    end
    return 2
  end
  make_ready(q, ctx, now, id, score, body)
  return 1
end

-- Tell sleeping schedulers that a delayed entry is due earlier than they may think.
local function announce_due(channel, queue, due)
  redis.call('PUBLISH', channel, queue .. ' ' .. due)
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

-- Leases past their deadline go back to ready, or to the dead set after max_deliveries.
local function reap_expired(q, now, limit, max_deliveries, ttl, pubs, write_states)
  local expired = redis.call('ZRANGEBYSCORE', q.leases, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    redis.call('ZREM', q.leases, id)
    local rk = q.record .. id
    local r = redis.call('HMGET', rk, 'd', 'p')
    if r[2] then
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
