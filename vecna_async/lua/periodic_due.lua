-- The periodic definitions whose next fire time has come.
-- KEYS: periodic_defs, periodic_next. ARGV: limit.
-- Returns {now_ms, next_fire_ms or -1 (after the due ones), code, tick, definition, ...}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[1]))
local out = { now, -1 }
for i = 1, #due, 2 do
  local def = redis.call('HGET', KEYS[1], due[i])
  if def then
    out[#out + 1] = due[i]
    out[#out + 1] = due[i + 1]
    out[#out + 1] = def
  else
    redis.call('ZREM', KEYS[2], due[i]) -- canceled meanwhile
  end
end
local first_later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT',
  0, 1)
if first_later[2] then
  out[2] = tonumber(first_later[2])
end
return out
