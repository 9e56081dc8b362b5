-- With a separate result backend (run on it): store states of one queue's tasks and publish each
-- final one to its reply channel and to the channels of the waiters backend_watch.lua registered
-- (then forgotten: they have their answer). Storing and reading the watchers happen in one
-- script, so a watcher registered at any moment is either seen here or reads the stored state.
-- KEYS: one key of the queue (for routing). ARGV: state_prefix, watchers_prefix, ttl, then per
-- state: id, state, reply channel(s) (space-separated, '' = none), mode: 'set', 'nx' (only
-- where no state is yet) or 'nf' (not over a final state). A final state is published only if
-- it was stored.
local state_prefix, watchers_prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local pubs = {}
for i = 4, #ARGV, 4 do
  local id, state, reply, mode = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key = state_prefix .. id
  local written
  if mode == 'nx' then
    written = redis.call('SET', key, state, 'EX', ttl, 'NX')
  elseif mode == 'nf' then
    local current = redis.call('GET', key)
    written = not (current and is_final(current))
      and redis.call('SET', key, state, 'EX', ttl)
  else
    written = redis.call('SET', key, state, 'EX', ttl)
  end
  if written and is_final(state) then
    local wk = watchers_prefix .. id
    local channels = redis.call('SMEMBERS', wk)
    if #channels > 0 then
      redis.call('DEL', wk)
    end
    local seen, targets = {}, {}
    for ch in string.gmatch(reply .. ' ' .. table.concat(channels, ' '), '%S+') do
      if not seen[ch] then -- e.g. the sender, waiting on its own channel: published to once
        seen[ch] = true
        targets[#targets + 1] = ch
      end
    end
    note_reply(pubs, table.concat(targets, ' '), id, state)
  end
end
publish_replies(pubs)
return 0
