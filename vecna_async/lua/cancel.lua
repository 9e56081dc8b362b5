-- Cancel tasks by id:
--   waiting (ready, delayed, parked, held by a limit): it leaves its set and its record goes;
--   running (leased), when `running` is '1': its record stays until its worker settles it (any
--     outcome it then sends is taken as CANCELED) and its worker is told at once, through
--     `cancel_channel`, to stop it;
--   not enqueued yet (a later chain link, a chord callback, or an id unknown here): it is
--     blocked in advance by a tombstone that lasts until the id is enqueued (then it is
--     CANCELED instead) or can no longer come, however long its predecessor takes;
--   finished (SUCCESS/FAILURE), dead-lettered, or running when `running` is not '1': left
--     alone (0).
-- A canceled task's state becomes CANCELED now, and so do the states of the tasks that would
-- have followed it (its callbacks and later chain links, its chord's callback): they will never
-- run, and whoever waits for them hears so. Claim, promote and enqueue skip a tombstoned id, so a
-- copy racing through promotion never runs; the tombstone of a task that was waiting or running
-- lives as long as results do (a resend of its id is CANCELED too).
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel,
--   write_states (0/1), ttl, running (0/1), cancel_channel, ids...
-- Returns one flag per id: 1 canceled (it will not finish on its own), 0 too late.
local q = queue_ready(ARGV[1])
local write_states, ttl = ARGV[3] == '1', tonumber(ARGV[4])
local cancel_running, cancel_channel = ARGV[5] == '1', ARGV[6]
local now = now_ms()
local pubs = {}
local out = {}
redis.call('ZREMRANGEBYSCORE', q.tombstones, '-inf', now)

local function cancel_state(id, name, reply, reason)
  if write_states then
    store_state(q, pubs, id, state_json(id, 'CANCELED', name or '', reason), reply, ttl)
  end
end

-- The tasks a canceled message would have sent on: its callbacks, its later chain links, its
-- chord's callback. They can no longer come: their tombstones (if canceled ahead) now expire,
-- and their states say CANCELED.
local function forget_followers(body, id, name)
  local ok, msg = pcall(cjson.decode, body)
  if not ok or type(msg) ~= 'table' then
    return
  end
  local because = 'canceled with ' .. name .. ' (' .. id .. ')'
  local function walk(m, follower)
    if type(m) ~= 'table' or type(m.id) ~= 'string' then
      return
    end
    if follower and m.queue == q.name then
      settle_tombstone(q, m.id, now, ttl)
      cancel_state(m.id, m.name, m.reply_to, because)
    end
    for _, list in ipairs({ m.on_success, m.on_error }) do
      if type(list) == 'table' then
        for _, child in ipairs(list) do
          walk(child, true)
        end
      end
    end
    walk(m.chain_next, true)
  end
  walk(msg, false)
  local cb = msg.chord_callback
  if type(cb) == 'table' and type(msg.group_id) == 'string' and msg.group_id ~= ''
      and cb.queue == q.name then
    local gk = q.chord .. msg.group_id
    if redis.call('SET', gk .. ':fired', 'canceled', 'NX', 'EX', ttl) then
      redis.call('EXPIRE', gk, ttl)
      if type(cb.id) == 'string' then
        cancel_state(cb.id, cb.name, cb.reply_to, 'chord member ' .. because)
      end
    end
    if type(cb.id) == 'string' then
      settle_tombstone(q, cb.id, now, ttl)
    end
  end
end

for i = 7, #ARGV do
  local id = ARGV[i]
  local rk = q.record .. id
  local r = redis.call('HMGET', rk, 'n', 'r', 'b')
  local stored = state_name(redis.call('GET', q.state .. id))
  local leased = redis.call('ZSCORE', q.leases, id)
  if (leased and not cancel_running) or redis.call('ZSCORE', q.dead, id)
      or redis.call('ZSCORE', q.dead_pending, id)
      or stored == 'SUCCESS' or stored == 'FAILURE' then
    out[#out + 1] = 0
  else
    if r[1] and leased then
      redis.call('ZADD', q.tombstones, now + ttl * 1000, id)
      forget_followers(r[3], id, r[1])
      redis.call('PUBLISH', cancel_channel, q.name .. ' ' .. id)
    elseif r[1] then
      redis.call('ZREM', q.delayed, id)
      redis.call('ZREM', q.ready, id)
      redis.call('ZREM', q.parked_prefix .. r[1], id)
      redis.call('ZREM', q.held .. r[1], id)
      redis.call('DEL', rk)
      redis.call('ZADD', q.tombstones, now + ttl * 1000, id)
      forget_followers(r[3], id, r[1])
    elseif stored ~= 'CANCELED' then
      redis.call('ZADD', q.tombstones, 'inf', id)
    end
    cancel_state(id, r[1], r[2])
    out[#out + 1] = 1
  end
end
publish_replies(pubs)
return out
