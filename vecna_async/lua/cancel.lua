-- Cancel tasks by id, if they have not started:
--   waiting (ready, delayed, parked): it leaves its set and its record goes; the tasks that would
--     have followed it (callbacks, later chain links) can no longer come, so their tombstones,
--     if any, now expire; a chord it belongs to will never fire;
--   not enqueued yet (a later chain link, a chord callback, or an id unknown here): it is
--     blocked in advance by a tombstone that lasts until the id is enqueued (then it is
--     CANCELED instead) or can no longer come, however long its predecessor takes;
--   leased (running), dead-lettered, or finished (SUCCESS/FAILURE): left alone (0).
-- Claim, promote and enqueue skip a tombstoned id, so a copy racing through promotion never
-- runs; a waiting task's tombstone lives as long as results do (a resend of its id is
-- CANCELED too).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel,
--   write_states (0/1), ttl, ids...
-- Returns one flag per id: 1 canceled (it will never run), 0 too late.
local q = queue_ready(ARGV[1])
local write_states, ttl = ARGV[3] == '1', tonumber(ARGV[4])
local now = now_ms()
local pubs = {}
local out = {}
redis.call('ZREMRANGEBYSCORE', q.tombstones, '-inf', now)

-- What a waiting message would have sent on: chain links, callbacks, its chord's callback.
local function forget_followers(body, name)
  local ok, msg = pcall(cjson.decode, body)
  if not ok or type(msg) ~= 'table' then
    return
  end
  local function walk(m)
    if type(m) ~= 'table' or type(m.id) ~= 'string' then
      return
    end
    if m.queue == q.name then
      settle_tombstone(q, m.id, now, ttl)
    end
    for _, list in ipairs({ m.on_success, m.on_error }) do
      if type(list) == 'table' then
        for _, child in ipairs(list) do
          walk(child)
        end
      end
    end
    walk(m.chain_next)
  end
  walk(msg)
  local cb = msg.chord_callback
  if type(cb) == 'table' and type(msg.group_id) == 'string' and msg.group_id ~= ''
      and cb.queue == q.name then
    local gk = q.chord .. msg.group_id
    if redis.call('SET', gk .. ':fired', 'canceled', 'NX', 'EX', ttl) then
      redis.call('EXPIRE', gk, ttl)
      if write_states and type(cb.id) == 'string' then
        local reason = 'chord member ' .. name .. ' (' .. msg.id .. ') was canceled'
        store_state(q, pubs, cb.id, state_json(cb.id, 'CANCELED', cb.name or '', reason),
          cb.reply_to, ttl)
      end
    end
    if type(cb.id) == 'string' then
      settle_tombstone(q, cb.id, now, ttl)
    end
  end
end

for i = 5, #ARGV do
  local id = ARGV[i]
  local rk = q.record .. id
  local r = redis.call('HMGET', rk, 'n', 'r', 'b')
  local stored = state_name(redis.call('GET', q.state .. id))
  if redis.call('ZSCORE', q.leases, id) or redis.call('ZSCORE', q.dead, id)
      or redis.call('ZSCORE', q.dead_pending, id)
      or stored == 'SUCCESS' or stored == 'FAILURE' then
    out[#out + 1] = 0
  else
    if r[1] then
      redis.call('ZREM', q.delayed, id)
      redis.call('ZREM', q.ready, id)
      redis.call('ZREM', q.parked_prefix .. r[1], id)
      redis.call('ZREM', q.held .. r[1], id)
      redis.call('DEL', rk)
      redis.call('ZADD', q.tombstones, now + ttl * 1000, id)
      forget_followers(r[3], r[1])
    elseif stored ~= 'CANCELED' then
      redis.call('ZADD', q.tombstones, 'inf', id)
    end
    if write_states then
      store_state(q, pubs, id, state_json(id, 'CANCELED', r[1] or ''), r[2], ttl)
    end
    out[#out + 1] = 1
  end
end
publish_replies(pubs)
return out
