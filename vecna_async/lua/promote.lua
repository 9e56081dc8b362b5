-- Move due entries of the delayed set to ready, at most `limit` per call.
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, limit, write_states (0/1), state_ttl.
-- Returns {moved, now_ms, next_due_ms or -1}; time is Redis's, so schedulers on skewed hosts agree.
local q = queue_ready(ARGV[1])
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', q.delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
local pubs = {}
local ctx = call_context(q)
for _, id in ipairs(due) do
  redis.call('ZREM', q.delayed, id)
  local r = redis.call('HMGET', q.record .. id, 'p', 'n', 'r')
  local p = r[1]
  if p and canceled(q, ctx, id) then
    redis.call('DEL', q.record .. id) -- canceled while it waited: it never runs
    if ARGV[4] == '1' then
      store_state(q, pubs, id, state_json(id, 'CANCELED', r[2]), r[3], tonumber(ARGV[5]))
    end
    settle_tombstone(q, id, now, tonumber(ARGV[5]))
  elseif p then
    make_ready(q, ctx, id, p)
    moved = moved + 1
  end
end
publish_replies(pubs)
local nxt = redis.call('ZRANGE', q.delayed, 0, 0, 'WITHSCORES')
return {moved, now, tonumber(nxt[2] or -1)}
