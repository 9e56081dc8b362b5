"""The skeleton of the two floor loops (``bare_redis`` and ``bare_alo``): no framework, just
redis.asyncio, msgspec and asyncio. Runs in the project's virtual environment.

Worker: one loop takes every free slot (up to 100), fetches that many messages in one call, starts
each as a coroutine; a flusher settles whatever finished while its previous call was in flight (one
call per batch, results written and one reply published per channel). Producer: sends with one
command (a batch with one command too) and waits for results on one shared pub/sub subscription.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from redis.asyncio import Redis

from benchmarks.systems import _common

encode = msgspec.json.encode
decode = msgspec.json.decode


class Message(msgspec.Struct, array_like=True):
    id: str
    reply: str
    sent: float
    sleep: float


@dataclass
class Done:
    """A finished message, waiting for the flusher."""

    id: str
    token: str
    result: bytes
    reply: str


@dataclass
class Floor:
    """What a floor loop plugs into the skeleton."""

    # claim(n) -> list of (message body, owner token) for at most n messages; [] if none
    claim: Callable[[Redis, int], Awaitable[list[tuple[bytes, str]]]]
    # wait(blocking client) -> a wake-up or a message body to run at once (or None after a timeout)
    wait: Callable[[Redis], Awaitable[bytes | None]]
    # settle(batch) -> one round trip that acks/stores the batch and publishes the replies
    settle: Callable[[Redis, list[Done]], Awaitable[None]]
    heartbeat: Callable[[Redis, list[tuple[str, str]]], Awaitable[None]] | None = None
    in_flight: dict[str, str] = field(default_factory=dict)


def run_worker(floor: Floor) -> None:
    _common.run_async(lambda: _worker(floor))


async def _worker(floor: Floor) -> None:
    url = _common.redis_url()
    main = Redis.from_url(url)
    blocking = Redis.from_url(url, socket_timeout=10)
    limit = _common.concurrency()
    free = asyncio.Semaphore(limit)
    done: list[Done] = []
    wakeup = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: set[asyncio.Task[None]] = set()

    async def run(body: bytes, token: str) -> None:
        try:
            msg = decode(body, type=Message)
            floor.in_flight[msg.id] = token
            value = await _common.task_body(msg.sent, msg.sleep)
            done.append(Done(msg.id, token, encode(value), msg.reply))
            wakeup.set()
        finally:
            free.release()

    async def flusher() -> None:
        while True:
            await wakeup.wait()
            wakeup.clear()
            batch = done[:]
            del done[:]
            if batch:
                await floor.settle(main, batch)
                for d in batch:
                    floor.in_flight.pop(d.id, None)

    async def heartbeat() -> None:
        while floor.heartbeat is not None:
            await asyncio.sleep(10)
            await floor.heartbeat(main, list(floor.in_flight.items()))

    def start(body: bytes, token: str) -> None:
        t = asyncio.create_task(run(body, token))
        running.add(t)
        t.add_done_callback(running.discard)

    async def consume() -> None:
        while True:
            await free.acquire()
            await asyncio.sleep(0)  # let tasks finishing in this same loop turn free their slots
            n = 1
            while n < limit and not free.locked():
                await free.acquire()
                n += 1
            claimed = await floor.claim(main, n)
            for _ in range(n - len(claimed)):
                free.release()
            for body, token in claimed:
                start(body, token)
            if not claimed:
                delivered = await floor.wait(blocking)
                if delivered is not None:  # the wait itself delivered a message (BRPOP)
                    await free.acquire()
                    start(delivered, "")

    _common.recorder().ready()
    services = [asyncio.create_task(f()) for f in (flusher, heartbeat, consume)]
    await stop.wait()
    services[2].cancel()
    if running:
        await asyncio.wait(running, timeout=5)
    wakeup.set()
    await asyncio.sleep(0.05)
    for s in services:
        s.cancel()
    await main.aclose()
    await blocking.aclose()


class ReplyClient:
    """Producer side: sends through ``push`` and waits for results on one subscription."""

    batch_api = "one command for the whole batch"

    def __init__(self, push: Callable[[Redis, list[tuple[str, bytes]]], Awaitable[None]]) -> None:
        self._push = push
        self.channel = f"bare:reply:{uuid.uuid4().hex[:12]}"
        self._redis: Redis | None = None
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def redis(self) -> Redis:
        assert self._redis is not None
        return self._redis

    async def open(self) -> None:
        self._redis = Redis.from_url(_common.redis_url())
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self.channel)
        self._reader = asyncio.create_task(self._read(pubsub))

    async def _read(self, pubsub: Any) -> None:
        async with pubsub:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                if not message or message.get("type") != "message":
                    continue
                for line in message["data"].split(b"\n"):
                    task_id, _, value = line.partition(b"\t")
                    fut = self._waiters.pop(task_id.decode(), None)
                    if fut is not None and not fut.done():
                        fut.set_result(value)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.redis.aclose()

    def _message(self, sent: float, sleep: float, reply: bool) -> tuple[str, bytes]:
        task_id = uuid.uuid4().hex
        return task_id, encode(Message(task_id, self.channel if reply else "", sent, sleep))

    async def send(self, sent: float, sleep: float) -> asyncio.Future[bytes]:
        """The handle is the future the reply resolves (registered before the send)."""
        task_id, body = self._message(sent, sleep, reply=True)
        fut = self._waiters[task_id] = asyncio.get_running_loop().create_future()
        await self._push(self.redis, [(task_id, body)])
        return fut

    async def send_batch(self, items: Sequence[tuple[float, float]]) -> None:
        await self._push(self.redis, [self._message(s, sl, reply=False) for s, sl in items])

    async def result(self, handle: Any, timeout: float) -> Any:
        return decode(await asyncio.wait_for(handle, timeout))


def now_ms() -> int:
    return int(time.time() * 1000)
