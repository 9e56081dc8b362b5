"""Floor 2, at-least-once: the design vecna_async implements, with no framework (project venv).

One Lua call claims up to 100 messages, each with a lease (deadline in a sorted set) and an owner
token, after putting expired leases back in the queue; tasks run as coroutines; finished tasks are
acked in batches by one token-checking Lua call that also writes the results and publishes one
reply per channel. Idle workers block on a wake-up list (a hint; they poll every second anyway).
"""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis

from benchmarks.systems import _bare, _common

QUEUE, BODIES, LEASES, OWNERS, WAKE = "alo:q", "alo:b", "alo:l", "alo:o", "alo:w"
LEASE_MS = 30_000

ENQUEUE = """
-- KEYS: queue bodies wake; ARGV: id body id body ...
local ids = {}
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  ids[#ids + 1] = ARGV[i]
end
redis.call('LPUSH', KEYS[1], unpack(ids))
if redis.call('LLEN', KEYS[3]) == 0 then
  redis.call('RPUSH', KEYS[3], '1')
end
return #ids
"""

CLAIM = """
-- KEYS: queue bodies leases owners wake; ARGV: max_n token lease_ms reap_limit
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('RPUSH', KEYS[1], id)
end
local ids = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if not ids then
  return {}
end
local deadline = now + tonumber(ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[3], deadline, id)
  redis.call('HSET', KEYS[4], id, ARGV[2])
end
if redis.call('LLEN', KEYS[1]) > 0 and redis.call('LLEN', KEYS[5]) == 0 then
  redis.call('RPUSH', KEYS[5], '1')  -- more left: wake the next idle worker
end
return redis.call('HMGET', KEYS[2], unpack(ids))
"""

SETTLE = """
-- KEYS: bodies leases owners; ARGV: ttl, then id token result reply per finished task
local pubs, lost = {}, {}
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('SET', 'alo:r:' .. id, ARGV[i + 2], 'EX', ARGV[1])
    local ch = ARGV[i + 3]
    if ch ~= '' then
      pubs[ch] = pubs[ch] or {}
      table.insert(pubs[ch], id .. '\\t' .. ARGV[i + 2])
    end
  else
    lost[#lost + 1] = id
  end
end
for ch, lines in pairs(pubs) do
  redis.call('PUBLISH', ch, table.concat(lines, '\\n'))
end
return lost
"""

HEARTBEAT = """
-- KEYS: leases owners; ARGV: lease_ms, then id token per held message
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  end
end
return 0
"""

_scripts: dict[str, Any] = {}


def script(r: Redis, name: str, source: str) -> Any:
    if name not in _scripts:
        _scripts[name] = r.register_script(source)
    return _scripts[name]


async def claim(r: Redis, n: int) -> list[tuple[bytes, str]]:
    token = uuid.uuid4().hex[:20]
    bodies = await script(r, "claim", CLAIM)(
        keys=[QUEUE, BODIES, LEASES, OWNERS, WAKE], args=[n, token, LEASE_MS, 100]
    )
    return [(b, token) for b in bodies if b is not None]


async def wait(r: Redis) -> bytes | None:
    await r.blpop([WAKE], timeout=1)
    return None


async def settle(r: Redis, batch: list[_bare.Done]) -> None:
    args: list[Any] = [3600]
    for d in batch:
        args += [d.id, d.token, d.result, d.reply]
    await script(r, "settle", SETTLE)(keys=[BODIES, LEASES, OWNERS], args=args)


async def heartbeat(r: Redis, leases: list[tuple[str, str]]) -> None:
    if leases:
        args: list[Any] = [LEASE_MS]
        for task_id, token in leases:
            args += [task_id, token]
        await script(r, "heartbeat", HEARTBEAT)(keys=[LEASES, OWNERS], args=args)


async def push(r: Redis, messages: list[tuple[str, bytes]]) -> None:
    args: list[Any] = []
    for task_id, body in messages:
        args += [task_id, body]
    await script(r, "enqueue", ENQUEUE)(keys=[QUEUE, BODIES, WAKE], args=args)


def worker() -> None:
    _bare.run_worker(_bare.Floor(claim=claim, wait=wait, settle=settle, heartbeat=heartbeat))


def client() -> _bare.ReplyClient:
    return _bare.ReplyClient(push)


if __name__ == "__main__":
    _common.main(worker, client)
