"""Periodic tasks, groups, chains and chords: stored in Redis under their ``code``, fired by any
scheduler, each tick exactly once.

Firing a tick is two steps, both safe to repeat: (1) enqueue the tick's messages with ids derived
from (code, tick) under a request id of (code, tick) — a second scheduler firing the same tick, or
the same one retrying, enqueues nothing new; (2) advance the definition to its next tick with a
compare-and-set. A scheduler that dies between the two leaves the tick due; the next scheduler
fires it again and (1) deduplicates it. After downtime the missed ticks fire once, not as a burst:
the next tick is computed from now, not from the missed one.
"""

from __future__ import annotations

import itertools
import uuid
from functools import lru_cache
from typing import Any

import msgspec

from vecna_async.broker.redis import RedisBroker, unavailable_as
from vecna_async.connection import AnyRedis, raw, text
from vecna_async.keys import Keys
from vecna_async.messages import PeriodicDefinition, TaskMessage, encode, periodic_decoder
from vecna_async.scheduler.cron import CronSchedule
from vecna_async.scripts import script
from vecna_async.signing import Signer
from vecna_async.tasks.wire import publish

_NAMESPACE = uuid.UUID("6f1c1d3e-8a0b-4b7e-9a53-0c7c5e2b9d41")
FIRING_DEDUP_SECONDS = 86_400
DUE_BATCH = 100


@lru_cache(maxsize=4096)
def schedule(spec: str, tz: str) -> CronSchedule:
    return CronSchedule.parse(spec, tz)


class PeriodicStore:
    """The periodic definitions in Redis, and the firing of their due ticks."""

    def __init__(
        self,
        client: AnyRedis,
        keys: Keys,
        broker: RedisBroker,
        max_bytes: int,
        signer: Signer | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._broker = broker
        self._max_bytes = max_bytes
        self._signer = signer  # signs the fired messages (Config.signing_keys)
        self._where = broker.where
        self.fired = 0

    def _k(self) -> list[str]:
        return [self._keys.periodic_defs, self._keys.periodic_next]

    async def add(self, definition: PeriodicDefinition) -> int:
        """Store the definition; returns its first fire time (epoch ms, Redis's clock)."""
        sched = schedule(definition.spec, definition.tz)
        async with unavailable_as(self._where):
            seconds, micros = await self._client.time()
            first = sched.next_after(int(seconds) * 1000 + int(micros) // 1000)
            args = [self._keys.sched_channel, definition.code, encode(definition), first]
            await script("periodic_add")(self._client, self._k(), args)
        return first

    async def cancel(self, code: str) -> bool:
        async with unavailable_as(self._where):
            return bool(await script("periodic_cancel")(self._client, self._k(), [code]))

    async def definitions(self) -> dict[str, PeriodicDefinition]:
        async with unavailable_as(self._where):
            stored: dict[Any, Any] = await self._client.hgetall(self._keys.periodic_defs)
        return {text(k): periodic_decoder.decode(raw(v)) for k, v in stored.items()}

    async def fire_due(self) -> float | None:
        """Fire every due tick; returns seconds until the next one (None: nothing scheduled)."""
        async with unavailable_as(self._where):
            reply = await script("periodic_due")(self._client, self._k(), [DUE_BATCH])
        now, next_ms = int(reply[0]), int(reply[1])
        upcoming = [next_ms] if next_ms >= 0 else []
        for i in range(2, len(reply), 3):
            tick = int(float(reply[i + 1]))
            definition = periodic_decoder.decode(raw(reply[i + 2]))
            upcoming.append(await self._fire(definition, tick, now))
        if len(reply) - 2 >= DUE_BATCH * 3:
            return 0.0  # more are due: go again at once
        return max(0.0, (min(upcoming) - now) / 1000) if upcoming else None

    async def _fire(self, d: PeriodicDefinition, tick: int, now: int) -> int:
        messages = firing_messages(d, tick)
        await publish(
            self._broker,
            messages,
            self._max_bytes,
            concurrency=d.concurrency,
            request_id=f"periodic:{d.code}:{tick}",
            request_ttl=FIRING_DEDUP_SECONDS,
            signer=self._signer,
        )
        nxt = schedule(d.spec, d.tz).next_after(max(tick, now))
        async with unavailable_as(self._where):
            if await script("periodic_advance")(self._client, self._k(), [d.code, tick, nxt]):
                self.fired += 1
        return nxt


def firing_messages(d: PeriodicDefinition, tick: int) -> list[TaskMessage]:
    """The messages of one firing, with fresh ids that depend only on (code, tick)."""
    seed = f"{d.code}:{tick}"
    counter = itertools.count()

    def new_id() -> str:
        return uuid.uuid5(_NAMESPACE, f"{seed}:{next(counter)}").hex

    group_id = uuid.uuid5(_NAMESPACE, f"{seed}:group").hex if d.kind in ("group", "chord") else ""
    callback = _fresh(d.callback, new_id) if d.callback is not None else None
    out = []
    for i, template in enumerate(d.tasks):
        msg = _fresh(template, new_id)
        if group_id:
            msg = msgspec.structs.replace(msg, group_id=group_id, group_index=i)
        if callback is not None:
            msg = msgspec.structs.replace(msg, chord_callback=callback)
        out.append(msg)
    return out


def _fresh(m: TaskMessage, new_id: Any) -> TaskMessage:
    return msgspec.structs.replace(
        m,
        id=new_id(),
        eta_ms=0,
        on_success=[_fresh(x, new_id) for x in m.on_success],
        on_error=[_fresh(x, new_id) for x in m.on_error],
        chain_next=_fresh(m.chain_next, new_id) if m.chain_next is not None else None,
    )
