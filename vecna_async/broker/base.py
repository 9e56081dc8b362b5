"""What a broker does, as a small Protocol, and the value types that cross it.

The path of a message: ``publish`` (enqueue) → ``claim`` (a batch, each with a lease) →
``extend_leases`` while it runs → ``settle`` (ack with its final state and follow-ups, retry,
dead-letter or release). Expired leases are reaped inside ``claim`` by any live worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vecna_async.messages import DeadLetter
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import Outgoing


@dataclass(slots=True)
class Claimed:
    """One delivery of a message to a worker: its raw body, how often it was delivered, and the
    lease token of this delivery. Tokens are unique per delivery (never reused after a retry,
    a release or a re-claim of the same id), so a worker that got the same id twice (a stall
    let its lease expire and it claimed it again) keeps the two apart: everything a worker
    tracks is keyed by token.

    ``dead_reason`` is set instead (not None) for a dead letter whose aftermath the worker must
    settle: ``on_error`` callbacks, a stopped chain, a failed chord, and the FAILURE state on a
    separate backend. It is not run and has no token.
    """

    queue: str
    id: str
    body: bytes
    deliveries: int
    token: str
    unregistered: bool
    dead_reason: str | None = None


@dataclass(slots=True)
class Promoted:
    """What one promotion pass did: entries moved, Redis's clock, the next due time (-1: none)."""

    moved: int
    now_ms: int
    next_due_ms: int


@dataclass(slots=True)
class ExtraState:
    """A state to store along with an outcome (e.g. the later links of a chain that stopped)."""

    queue: str
    task_id: str
    state: bytes
    reply_to: str


@dataclass(slots=True)
class ChordSuccess:
    """A chord member succeeded: record its results; the last one sends the callback.

    ``callback`` is the callback message with its body split where the members' results go
    (``body_prefix`` + results joined by commas + ``body_suffix``).
    """

    group_key: str
    fired_key: str
    index: int
    count: int
    results: bytes
    callback: Outgoing
    body_prefix: bytes
    body_suffix: bytes


@dataclass(slots=True)
class ChordFailure:
    """A chord member failed for good: the callback is never sent; its state says why."""

    fired_key: str
    callback: ExtraState


@dataclass(slots=True)
class Done:
    """A message finished (success or final failure): ack it, store its state, send follow-ups."""

    task_id: str
    token: str
    state: bytes
    follow_ups: list[Outgoing] = field(default_factory=list)
    extra_states: list[ExtraState] = field(default_factory=list)
    chord: ChordSuccess | ChordFailure | None = None


@dataclass(slots=True)
class SettleBatch:
    """Outcomes of one queue's messages, applied in one call, each fenced by its lease token.

    ``request_id`` makes a resent batch a no-op that answers what the first call answered: a
    batch whose reply was lost is sent again exactly as it was (never with outcomes added)."""

    queue: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[tuple[str, str]] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)
    aftermath: list[Done] = field(default_factory=list)
    """Follow-ups of messages a claim dead-lettered (no token: applied once, if still dead)."""
    retry: list[tuple[str, str, bytes, bytes, int]] = field(default_factory=list)
    dead: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    release: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        parts: tuple[list[Any], ...] = (
            self.started, self.done, self.aftermath, self.retry, self.dead, self.release,
        )  # fmt: skip
        return sum(len(p) for p in parts)

    def tokens(self) -> list[str]:
        """The deliveries this batch ends (each frees its worker slot once applied)."""
        out = [d.token for d in self.done]
        out += [e[1] for es in (self.retry, self.dead, self.release) for e in es]
        return out


class Broker(Protocol):
    """The queue side of vecna_async. ``RedisBroker`` implements it."""

    async def publish(
        self, messages: Sequence[Outgoing], request_id: str = "", request_ttl: int = 0
    ) -> None:
        """Enqueue messages (ready, or delayed when ``due_ms`` is in the future). A repeated
        ``request_id`` within ``request_ttl`` seconds (0: as long as redis-py may still resend
        a call) is a no-op (per queue)."""

    async def claim(
        self, queue: str, max_n: int, task_names: Sequence[str], worker: str = ""
    ) -> list[Claimed]:
        """Claim up to ``max_n`` messages of the given task names, each with a fresh lease.
        ``worker`` (the claiming worker's name) is recorded with each lease, so an operator sees
        who runs what (``server.inspect().running(queue)``)."""

    async def settle(self, batch: SettleBatch) -> list[str]:
        """Apply outcomes; returns the entries not applied: the token of a delivery whose lease
        went to another delivery, ``gone:<token>`` if its message no longer exists at all,
        ``canceled:<token>`` if the task was canceled while it ran (its outcome is dropped), and
        the id of an aftermath entry applied already."""

    async def extend_leases(self, queue: str, leases: Sequence[tuple[str, str]]) -> list[str]:
        """Renew leases (id, token); returns the tokens whose lease was lost (``gone:<token>``
        when the message no longer exists)."""

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until there may be work in one of ``queues`` (a wake-up, a hint only: True) or
        ``timeout`` passes (False)."""

    async def promote_due(self, queue: str, limit: int) -> Promoted:
        """Move due delayed entries of ``queue`` to ready."""

    async def get_pending_tasks(self, queue: str) -> list[Signature]:
        """The tasks waiting in ``queue`` (ready and parked), in the order they will be served."""

    async def get_delayed_tasks(self, queue: str) -> list[Signature]:
        """The tasks waiting for their ETA or retry time in ``queue``, earliest first."""

    async def get_dead_letters(
        self, queue: str, offset: int = 0, limit: int = 100
    ) -> list[DeadLetter]:
        """Messages given up on in ``queue``, oldest first, with the reason (one page)."""

    async def requeue_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all when ``ids`` is None) back to ready; returns how many."""

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None) for good; returns how many."""

    async def cancel(
        self, queue: str, task_ids: Sequence[str], *, running: bool = False
    ) -> list[bool]:
        """Cancel tasks that have not started (and with ``running``, those running now: their
        worker stops them); True per id that will not finish on its own."""
