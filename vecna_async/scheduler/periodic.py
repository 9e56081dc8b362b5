"""Periodic tasks, groups, chains and chords: stored in Redis under their ``code``, fired by any
scheduler, each tick exactly once.

Firing a tick is two steps, both safe to repeat: (1) enqueue the tick's messages with ids derived
from (code, tick), each queue comparing the tick with the last one it took for the code in the
same script (``lua/enqueue_tick.lua``: one small key per code and queue, not one per tick) — a
second scheduler firing the same tick, or the same one retrying, enqueues nothing new; (2)
advance the definition to its next tick with a compare-and-set. A scheduler that dies between
the two leaves the tick due; the next scheduler fires it again and (1) deduplicates it. After
downtime the missed ticks fire once, not as a burst: the next tick is computed from now, not from
the missed one.

A stored definition no scheduler can fire (not JSON, an unknown format version, a spec, name or
message size that fails the checks ``add`` makes, as a hand edit or an older release may leave) is
moved aside, once, into a quarantine hash with the reason: one bad entry must not stop every other
periodic tick, nor the delayed tasks the same scheduler pass promotes. Transient trouble (Redis
unreachable, or refusing for now) never quarantines: the definitions stay and the pass is retried.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from functools import lru_cache
from typing import Any

import msgspec

from vecna_async.broker.redis import RedisBroker, unavailable_as
from vecna_async.connection import AnyRedis, raw
from vecna_async.exceptions import InvalidSignature
from vecna_async.keys import Keys, check_name
from vecna_async.messages import (
    FORMAT_VERSION,
    PeriodicDefinition,
    QuarantinedPeriodic,
    TaskMessage,
    encode,
    periodic_decoder,
    quarantined_decoder,
)
from vecna_async.redis_errors import is_transient
from vecna_async.scheduler.cron import CronSchedule
from vecna_async.scripts import script
from vecna_async.signing import Signer, sign_definition, verify_definition
from vecna_async.tasks.wire import outgoing, walk

log = logging.getLogger("vecna_async.scheduler")
_NAMESPACE = uuid.UUID("6f1c1d3e-8a0b-4b7e-9a53-0c7c5e2b9d41")
FIRING_DEDUP_SECONDS = 86_400
"""How long a queue remembers the last tick it took for a code (refreshed at every firing): a
scheduler stalled longer than this between reading a due tick and firing it could fire it twice."""
DUE_BATCH = 100
KINDS = ("task", "group", "chain", "chord")


@lru_cache(maxsize=4096)
def schedule(spec: str, tz: str) -> CronSchedule:
    return CronSchedule.parse(spec, tz)


class BadDefinition(Exception):
    """A stored definition that no scheduler can fire however often it retries; says why."""


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

    def _k(self, *, bad: bool = False) -> list[str]:
        keys = [self._keys.periodic_defs, self._keys.periodic_next]
        return [*keys, self._keys.periodic_bad] if bad else keys

    async def add(self, definition: PeriodicDefinition) -> int:
        """Store the definition (replacing one under its code, quarantined or not); returns its
        next fire time (epoch ms, Redis's clock). Replacing one with the same spec and time zone
        keeps its next fire time (no tick fired twice or skipped by a re-declaration); otherwise
        it is the first tick from now. Raises ValueError (``InvalidCronSpec``,
        ``MessageTooLarge`` ...) for one a scheduler could not fire."""
        check_definition(definition, self._max_bytes)
        sched = schedule(definition.spec, definition.tz)
        async with unavailable_as(self._where):
            seconds, micros = await self._client.time()
            first = sched.next_after(int(seconds) * 1000 + int(micros) // 1000)
            args = [
                self._keys.sched_channel, definition.code, encode(definition), first,
                definition.spec, definition.tz,
            ]  # fmt: skip
            return int(await script("periodic_add")(self._client, self._k(bad=True), args))

    async def cancel(self, code: str) -> bool:
        """Stop the definition (and drop its quarantine record); True if either existed."""
        async with unavailable_as(self._where):
            keys = [*self._k(bad=True), self._keys.periodic_last]
            return bool(await script("periodic_cancel")(self._client, keys, [code]))

    async def definitions(self) -> dict[str, PeriodicDefinition]:
        """The stored definitions a scheduler can fire; a bad one is left out (the next pass that
        finds it due moves it to ``quarantined``), so one hand edit cannot break a listing."""
        async with unavailable_as(self._where):
            stored: dict[Any, Any] = await self._client.hgetall(self._keys.periodic_defs)
        out = {}
        for k, v in stored.items():
            code = _text(k)
            with contextlib.suppress(BadDefinition):
                out[code] = decode_stored(code, raw(v), self._max_bytes)
        return out

    async def fire_times(self) -> tuple[dict[str, int], dict[str, int]]:
        """Each code's next fire time and the last tick fired (epoch ms, Redis's clock), read
        in one round trip. The last firing is recorded by this release's schedulers only."""
        pipeline = self._client.pipeline(transaction=False)
        async with unavailable_as(self._where), pipeline as pipe:
            pipe.zrange(self._keys.periodic_next, 0, -1, withscores=True)
            pipe.hgetall(self._keys.periodic_last)
            upcoming, last = await pipe.execute()
        return (
            {_text(code): int(score) for code, score in upcoming},
            {_text(code): int(tick) for code, tick in last.items()},
        )

    async def quarantined(self) -> list[QuarantinedPeriodic]:
        """The definitions moved aside because no scheduler could fire them, oldest first. They
        stay until re-sent under their code or canceled."""
        async with unavailable_as(self._where):
            stored: dict[Any, Any] = await self._client.hgetall(self._keys.periodic_bad)
        records = [_quarantine_record(_text(k), raw(v)) for k, v in stored.items()]
        return sorted(records, key=lambda r: (r.quarantined_at_ms, r.code))

    async def fire_due(self) -> float | None:
        """Fire every due tick; returns seconds until the next one (None: nothing scheduled).

        A bad definition is quarantined and the others fire. A transient failure ends the pass at
        once (the next pass retries, nothing is moved); any other failure of one definition is
        raised after the others were fired, so it cannot starve them.
        """
        async with unavailable_as(self._where):
            reply = await script("periodic_due")(self._client, self._k(), [DUE_BATCH])
        now, next_ms = int(reply[0]), int(reply[1])
        upcoming = [next_ms] if next_ms >= 0 else []
        failures: list[Exception] = []
        for i in range(2, len(reply), 3):
            code, tick, stored = raw(reply[i]), int(float(reply[i + 1])), raw(reply[i + 2])
            try:
                nxt = await self._fire_stored(code, tick, stored, now)
            except Exception as exc:
                if is_transient(exc):
                    raise  # not the definition's fault: it stays as it is for the next pass
                failures.append(exc)
                continue
            if nxt is not None:
                upcoming.append(nxt)
        if failures:
            raise failures[0] if len(failures) == 1 else ExceptionGroup("periodic ticks", failures)
        if len(reply) - 2 >= DUE_BATCH * 3:
            return 0.0  # more are due: go again at once
        return max(0.0, (min(upcoming) - now) / 1000) if upcoming else None

    async def _fire_stored(self, code: bytes, tick: int, stored: bytes, now: int) -> int | None:
        """Fire the tick of the definition as stored and return its next tick; or, if no
        scheduler can fire it, quarantine it and return None."""
        try:
            definition = decode_stored(_text(code), stored, self._max_bytes)
            if self._signer is not None:  # a definition written by someone without a key
                verify_definition(definition, self._signer)
        except BadDefinition as bad:
            await self._quarantine(code, stored, str(bad), now)
            return None
        except InvalidSignature as bad:  # the same words as a dead-lettered message's reason
            await self._quarantine(code, stored, f"InvalidSignature: {bad}", now)
            return None
        return await self._fire(definition, tick, now)

    async def _quarantine(self, code: bytes, stored: bytes, reason: str, now: int) -> None:
        """Move the definition aside if it is still the bytes read; only the scheduler that moved
        it logs it, so however many meet it, it is logged once."""
        record = QuarantinedPeriodic(
            code=_text(code), reason=reason, raw=stored, quarantined_at_ms=now
        )
        args = [code, stored, encode(record)]
        async with unavailable_as(self._where):
            moved = await script("periodic_quarantine")(self._client, self._k(bad=True), args)
        if moved:
            log.error(
                "periodic definition %r cannot fire and was quarantined (in %s): %s; "
                "re-send it under its code, or cancel it",
                record.code, self._keys.periodic_bad, reason,
            )  # fmt: skip

    async def _fire(self, d: PeriodicDefinition, tick: int, now: int) -> int:
        out = [outgoing(m, self._max_bytes, self._signer) for m in firing_messages(d, tick)]
        size = d.concurrency or len(out) or 1  # every message is checked before any is sent
        for start in range(0, len(out), size):
            chunk = out[start : start + size]
            await self._broker.publish_tick(chunk, d.code, start, tick, FIRING_DEDUP_SECONDS)
        nxt = schedule(d.spec, d.tz).next_after(max(tick, now))
        async with unavailable_as(self._where):
            keys = [*self._k(), self._keys.periodic_last]
            if await script("periodic_advance")(self._client, keys, [d.code, tick, nxt]):
                self.fired += 1
        return nxt


def new_definition(
    spec: str,
    tz: str | None,
    code: str,
    kind: str,
    tasks: list[TaskMessage],
    callback: TaskMessage | None = None,
    concurrency: int = 0,
    *,
    cluster: bool = False,
    signer: Signer | None = None,
) -> PeriodicDefinition:
    """A definition to store (signed with a ``signer``). Raises InvalidCronSpec naming a bad
    ``spec`` or ``tz`` (default UTC), and ValueError for a workflow over several queues on a
    ``cluster`` (its firing is one script call: one slot)."""
    sched = schedule(spec.strip(), tz or "UTC")
    if cluster and len({m.queue for m in walk([*tasks, *([callback] if callback else [])])}) > 1:
        raise ValueError("on Redis Cluster, a periodic workflow's tasks must share one queue")
    definition = PeriodicDefinition(
        code=code, spec=sched.spec, tz=sched.tz, kind=kind, tasks=tasks,
        callback=callback, concurrency=concurrency,
    )  # fmt: skip
    return definition if signer is None else sign_definition(definition, signer)


def check_definition(d: PeriodicDefinition, max_bytes: int) -> None:
    """Raise ValueError naming what makes ``d`` impossible to fire: a spec or zone that does not
    parse, an unknown kind, a code, queue or task name ``check_name`` rejects, a firing message
    over ``max_bytes``. Checked when storing one and again before firing one, which is what
    catches hand edits, older formats and a lowered ``max_message_bytes``."""
    schedule(d.spec, d.tz)
    check_name("periodic code", d.code)
    if d.kind not in KINDS:
        raise ValueError(f"kind {d.kind!r} is not one of {', '.join(KINDS)}")
    if not d.tasks or (d.callback is not None) != (d.kind == "chord"):
        raise ValueError(f"a {d.kind} needs its tasks, and a callback if and only if a chord")
    if d.concurrency < 0:
        raise ValueError(f"concurrency {d.concurrency} is negative")
    messages = firing_messages(d, 0)  # a firing's size does not depend on its tick
    for m in walk(messages):
        check_name("queue name", m.queue)
        check_name("task name", m.name)
    for m in messages:
        outgoing(m, max_bytes)  # raises MessageTooLarge, a ValueError


def decode_stored(code: str, stored: bytes, max_bytes: int) -> PeriodicDefinition:
    """The definition stored under ``code``; raises BadDefinition saying why it cannot fire."""
    try:
        d = periodic_decoder.decode(stored)
    except msgspec.DecodeError as exc:
        raise BadDefinition(_undecodable(stored, exc)) from None
    if d.code != code:
        raise BadDefinition(f"its code {d.code!r} is not the code {code!r} it is stored under")
    try:
        check_definition(d, max_bytes)
    except ValueError as exc:
        raise BadDefinition(str(exc)) from None
    return d


def _undecodable(stored: bytes, exc: msgspec.DecodeError) -> str:
    try:
        version = msgspec.json.decode(stored).get("v", FORMAT_VERSION)
    except (msgspec.DecodeError, AttributeError):  # not JSON, or JSON but not an object
        version = FORMAT_VERSION
    if version != FORMAT_VERSION:
        return f"format version {version!r} is not the one this release reads ({FORMAT_VERSION})"
    return f"not a periodic definition: {exc}"


def _quarantine_record(code: str, stored: bytes) -> QuarantinedPeriodic:
    try:
        return quarantined_decoder.decode(stored)
    except msgspec.DecodeError as exc:  # edited by hand too: show it rather than fail the listing
        reason = f"its quarantine record does not decode ({exc})"
        return QuarantinedPeriodic(code=code, reason=reason, raw=stored, quarantined_at_ms=0)


def _text(code: Any) -> str:
    """A code as text, whatever bytes a hand edit left (a mismatch then names it)."""
    return raw(code).decode(errors="replace")


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
