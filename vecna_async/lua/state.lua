-- A task's current state (see current_state in _lib.lua). KEYS: one key of the queue (routing).
-- ARGV: queue (packed keys), sched_channel, id.
local q = queue_ready(ARGV[1])
return current_state(q, ARGV[3])
