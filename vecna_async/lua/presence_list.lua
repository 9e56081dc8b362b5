-- The live workers of the registry (see presence_beat.lua), most recently seen first; index
-- entries whose HASH has expired are removed on the way (a worker that stopped heartbeating
-- drops out by itself).
-- KEYS: workers_index. ARGV: worker_prefix, limit.
-- Returns {now_ms, name, {field, value, ...}, name, {...}, ...}.
local out = { now_ms() }
for _, name in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. name)
  if #fields > 0 then
    out[#out + 1] = name
    out[#out + 1] = fields
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
return out
