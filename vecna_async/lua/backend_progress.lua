-- With a separate result backend (run on it): store a task's latest progress and push it to the
-- sender's reply channel and to the waiters backend_watch.lua registered, as progress.lua does.
-- KEYS: the progress key, the watchers key. ARGV: id, value (JSON), ttl, reply channel(s).
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
local seen = {}
local targets = redis.call('SMEMBERS', KEYS[2])
for ch in string.gmatch(ARGV[4], '%S+') do
  targets[#targets + 1] = ch
end
for _, ch in ipairs(targets) do
  if not seen[ch] then
    seen[ch] = true
    redis.call('PUBLISH', ch, ARGV[1] .. '\t@' .. ARGV[2] .. '\n')
  end
end
return 1
