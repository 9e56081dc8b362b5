"""Floor 1, at-most-once: a bare redis.asyncio list queue with no framework (project venv).

Per task: LPUSH (a batch: one LPUSH with every message), RPOP with a count for up to 100 free slots
(BRPOP when the list is empty), then per finished batch one pipeline of SET result EX + one PUBLISH
per reply channel. Nothing tracks a message once popped: a worker that dies loses what it held.
"""

from __future__ import annotations

from redis.asyncio import Redis

from benchmarks.systems import _bare, _common

QUEUE = "bare:q"


async def claim(r: Redis, n: int) -> list[tuple[bytes, str]]:
    bodies: list[bytes] | None = await r.rpop(QUEUE, n)  # type: ignore[assignment]
    return [(b, "") for b in bodies or []]


async def wait(r: Redis) -> bytes | None:
    got: list[bytes] | None = await r.brpop([QUEUE], timeout=1)  # type: ignore[assignment]
    return None if got is None else got[1]


async def settle(r: Redis, batch: list[_bare.Done]) -> None:
    replies: dict[str, list[bytes]] = {}
    async with r.pipeline(transaction=False) as pipe:
        for d in batch:
            pipe.set(f"bare:r:{d.id}", d.result, ex=3600)
            if d.reply:
                replies.setdefault(d.reply, []).append(d.id.encode() + b"\t" + d.result)
        for channel, lines in replies.items():
            pipe.publish(channel, b"\n".join(lines))
        await pipe.execute()


async def push(r: Redis, messages: list[tuple[str, bytes]]) -> None:
    await r.lpush(QUEUE, *[body for _, body in messages])


def worker() -> None:
    _bare.run_worker(_bare.Floor(claim=claim, wait=wait, settle=settle))


def client() -> _bare.ReplyClient:
    return _bare.ReplyClient(push)


if __name__ == "__main__":
    _common.main(worker, client)
