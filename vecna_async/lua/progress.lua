-- A running task reports progress: store it as the task's latest and push it to every channel
-- waiting for the task (the sender's and the watchers' in the record's `r`) as a line
-- "<id>\t@<value JSON>" (a state line's payload starts with '{', a progress line's with '@').
-- KEYS: one key of the queue (for routing). ARGV: queue (packed keys), sched_channel, id, value
-- (JSON), ttl. Returns 1 if the task is still known (its record exists), 0 otherwise.
local q = queue_ready(ARGV[1])
local id, value, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('SET', q.progress .. id, value, 'EX', ttl)
local channels = redis.call('HGET', q.record .. id, 'r')
if not channels then
  return 0
end
for ch in string.gmatch(channels, '%S+') do
  redis.call('PUBLISH', ch, id .. '\t@' .. value .. '\n')
end
return 1
