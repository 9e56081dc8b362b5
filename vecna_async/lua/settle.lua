-- Apply a batch of outcomes from one worker, each fenced by its delivery's lease token: an entry
-- whose token no longer owns the message (its lease expired and another worker took it) changes
-- nothing and its token is returned as lost (an aftermath entry returns its id); as 'gone:' ..
-- token if the message record no longer exists and no final state says another delivery
-- finished it (Redis lost its data: restarted without persistence, flushed). A resent call
-- (same request id) returns the first call's reply and changes nothing.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel,
--   write_states (0/1), state_ttl, request_id, resend_window, n_other,
--   then n_other packed queues (as ARGV[1]) that follow-ups go to, then the
--   entries as one msgpack-encoded flat array (binary values as msgpack str):
--   S id token                   started: state STARTED
--   D id token state AFTER       done: ack, store the final state, then apply AFTER
--   K id state AFTER             the aftermath of a message the claim dead-lettered: apply AFTER
--                                once (fenced by the dead set and a flag on the record)
--   R id token state body delay  retry: new body, back to the delayed set (ready if delay 0)
--   X id token reason state      dead-letter with a reason
--   L id token                   release: back to ready (graceful shutdown), not a delivery
-- AFTER = n_follow [follow-up x 9] n_extra [extra x 4] chord_kind [chord fields]:
--   follow-ups to enqueue: queue_index (0 = this queue) id name body priority due ignore reply
--     pending_state
--   extra states to store (a stopped chain's later links): queue_index id state reply
--   chord_kind '-' none; 'S' a member succeeded (15 fields): group_key fired_key index count
--     results cb_queue_index cb_id cb_name cb_body_prefix cb_body_suffix cb_priority cb_due
--     cb_ignore cb_reply cb_pending_state -- the last member to succeed sends the callback, exactly
--     once (the fired key), with every member's results spliced into its args in group order;
--     the members' results live until then (no expiry: members may finish days apart);
--     'F' a member failed for good (5 fields): fired_key cb_queue_index cb_id cb_failure_state
--     cb_reply -- the callback will never be sent and its state says why
local q = queue_ready(ARGV[1])
local queue, sched_channel = q.name, ARGV[2]
local write_states, ttl = ARGV[3] == '1', tonumber(ARGV[4])
local request_id, resend_window = ARGV[5], tonumber(ARGV[6])
local previous = previous_reply(q, request_id)
if previous then
  local lost = {}
  for token in string.gmatch(previous, '%S+') do
    lost[#lost + 1] = token
  end
  return lost
end
local queues = { [0] = q }
local names = { [0] = queue }
local i = 8
for n = 1, tonumber(ARGV[7]) do
  queues[n] = queue_from(ARGV[i])
  names[n] = queues[n].name
  i = i + 1
end
-- The entries come msgpack-encoded in the last argument: one argument instead of ~10 per task
-- saves redis-py most of its per-argument packing work.
local A = cmsgpack.unpack(ARGV[i])
i = 1
local now = now_ms()
local pubs = {}
local lost = {}
local acked = {} -- leases to drop: one ZREM for the whole batch

local contexts = {}
local function ctx_of(qi)
  contexts[qi] = contexts[qi] or call_context(queues[qi])
  return contexts[qi]
end

-- Whether `token` still owns the message; if so, the delivery ends here (its concurrency share
-- under a limit is free again).
local function owned(id, rk, token)
  local r = redis.call('HMGET', rk, 'o', 'n', 'l')
  if r[1] ~= token then
    return false
  end
  limits_end(q, id, r[2], r[3])
  return true
end

-- A delivery that owned its message ends while the task was canceled meanwhile (cancel.lua left
-- a tombstone and stored CANCELED): whatever it reports, the message is done with, nothing
-- follows from it, and its token is returned as "canceled:<token>" (a separate backend's worker
-- then stores nothing over the CANCELED state).
local function ended_canceled(id, rk, token)
  if not canceled(q, ctx_of(0), id) then
    return false
  end
  redis.call('DEL', rk)
  redis.call('ZREM', q.leases, id)
  lost[#lost + 1] = 'canceled:' .. token
  return true
end

-- An entry not applied: its token, marked 'gone:' if its message no longer exists at all.
local function not_applied(id, token)
  lost[#lost + 1] = lost_token(q, id, token)
end

local function enqueue_at(qi, a)
  local due = A[a + 4]
  if enqueue(queues[qi], ctx_of(qi), now, A[a], A[a + 1], A[a + 2], A[a + 3], due,
      A[a + 5], A[a + 6], A[a + 7], ttl) == 3 then
    announce_due(sched_channel, names[qi], due)
  end
end

-- Where the AFTER part starting at `a` ends (the index of the next entry).
local function after_end(a)
  local n_follow = tonumber(A[a])
  local e = a + 1 + n_follow * 9
  local c = e + 1 + tonumber(A[e]) * 4
  local kind = A[c]
  return c + 1 + (kind == 'S' and 15 or (kind == 'F' and 5 or 0))
end

local function send_chord_callback(c)
  local gk, fired, count = A[c + 1], A[c + 2], tonumber(A[c + 4])
  redis.call('HSET', gk, A[c + 3], A[c + 5])
  if redis.call('HLEN', gk) < count then
    redis.call('PERSIST', gk) -- (written with an expiry by an older release)
    return
  end
  if not redis.call('SET', fired, '1', 'NX', 'EX', ttl) then
    return
  end
  redis.call('EXPIRE', gk, ttl)
  local parts = {}
  for k = 0, count - 1 do
    local v = redis.call('HGET', gk, tostring(k))
    if v and v ~= '' then
      parts[#parts + 1] = v
    end
  end
  local joined = table.concat(parts, ',')
  local prefix = A[c + 9]
  if joined == '' then
    prefix = (string.gsub(prefix, ',$', ''))
  end
  -- the callback's fields, laid out as a follow-up's minus the body (spliced here)
  local qi = tonumber(A[c + 6])
  local due = A[c + 12]
  if enqueue(queues[qi], ctx_of(qi), now, A[c + 7], A[c + 8], prefix .. joined .. A[c + 10],
      A[c + 11], due, A[c + 13], A[c + 14], A[c + 15], ttl) == 3 then
    announce_due(sched_channel, names[qi], due)
  end
end

-- Apply the AFTER part starting at `a`.
local function apply_after(a)
  local n_follow = tonumber(A[a])
  for f = a + 1, a + n_follow * 9, 9 do
    enqueue_at(tonumber(A[f]), f + 1)
  end
  local e = a + 1 + n_follow * 9
  local c = e + 1 + tonumber(A[e]) * 4
  for x = e + 1, c - 1, 4 do -- the later links of a stopped chain: they will never run
    local xq = queues[tonumber(A[x])]
    if write_states then
      store_state(xq, pubs, A[x + 1], A[x + 2], A[x + 3], ttl)
    end
    settle_tombstone(xq, A[x + 1], now, ttl)
  end
  if A[c] == 'S' then
    send_chord_callback(c)
  elseif A[c] == 'F' then
    local fired, cq = A[c + 1], queues[tonumber(A[c + 2])]
    if redis.call('SET', fired, 'failed', 'NX', 'EX', ttl) then
      redis.call('EXPIRE', string.sub(fired, 1, -7), ttl) -- the members' results (":fired" off)
      if write_states then
        store_state(cq, pubs, A[c + 3], A[c + 4], A[c + 5], ttl)
      end
      settle_tombstone(cq, A[c + 3], now, ttl)
    end
  end
end

while i <= #A do
  local kind, id, token = A[i], A[i + 1], A[i + 2]
  local rk = q.record .. id
  if kind == 'S' then
    i = i + 3
    local r = redis.call('HMGET', rk, 'o', 'n')
    if r[1] == token then
      if write_states then
        redis.call('SET', q.state .. id, state_json(id, 'STARTED', r[2]), 'EX', ttl)
      end
    else
      not_applied(id, token)
    end
  elseif kind == 'D' then
    local state = A[i + 3]
    local a = i + 4
    i = after_end(a)
    local r = redis.call('HMGET', rk, 'o', 'r', 'n', 'l')
    if r[1] ~= token then
      not_applied(id, token)
    else
      limits_end(q, id, r[3], r[4]) -- as owned() does, with the reply channel read in one call
      if not ended_canceled(id, rk, token) then
        redis.call('DEL', rk)
        acked[#acked + 1] = id
        if write_states then
          store_state(q, pubs, id, state, r[2], ttl)
        end
        apply_after(a)
      end
    end
  elseif kind == 'K' then
    local state = token -- K has no token: its third field is the state
    local a = i + 3
    i = after_end(a)
    redis.call('ZREM', q.dead_pending, id)
    if redis.call('ZSCORE', q.dead, id) and redis.call('HSETNX', rk, 'k', '1') == 1 then
      if write_states and state ~= '' then
        store_state(q, pubs, id, state, redis.call('HGET', rk, 'r'), ttl)
      end
      apply_after(a)
    else
      lost[#lost + 1] = id
    end
  elseif kind == 'R' then
    local state, body, due = A[i + 3], A[i + 4], now + tonumber(A[i + 5])
    i = i + 6
    if not owned(id, rk, token) then
      not_applied(id, token)
    elseif not ended_canceled(id, rk, token) then
      redis.call('HDEL', rk, 'o')
      redis.call('HSET', rk, 'b', body, 'd', 0)
      redis.call('ZREM', q.leases, id)
      if write_states then
        redis.call('SET', q.state .. id, state, 'EX', ttl)
      end
      if due > now then
        redis.call('ZADD', q.delayed, due, id)
        if redis.call('ZRANGE', q.delayed, 0, 0)[1] == id then
          announce_due(sched_channel, queue, due)
        end
      else
        redis.call('ZADD', q.ready, redis.call('HGET', rk, 'p'), id)
        wake(q)
      end
    end
  elseif kind == 'X' then
    local reason, state = A[i + 3], A[i + 4]
    i = i + 5
    if not owned(id, rk, token) then
      not_applied(id, token)
    elseif not ended_canceled(id, rk, token) then
      redis.call('ZREM', q.leases, id)
      dead_letter(q, now, id, reason, state, ttl, pubs, write_states)
    end
  elseif kind == 'L' then
    i = i + 3
    if not owned(id, rk, token) then
      not_applied(id, token)
    elseif not ended_canceled(id, rk, token) then
      redis.call('HDEL', rk, 'o')
      redis.call('HINCRBY', rk, 'd', -1)
      redis.call('ZREM', q.leases, id)
      redis.call('ZADD', q.ready, redis.call('HGET', rk, 'p'), id)
      wake(q)
    end
  else
    return redis.error_reply('settle: unknown entry kind ' .. tostring(kind) .. ' at entry field ' .. i)
  end
end
for k = 1, #acked, 1000 do -- (unpack has a limit on its number of values)
  redis.call('ZREM', q.leases, unpack(acked, k, math.min(k + 999, #acked)))
end
publish_replies(pubs)
remember_reply(q, request_id, table.concat(lost, ' '), resend_window)
return lost
