"""What a result backend does, as a small Protocol. ``RedisBackend`` implements it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vecna_async.messages import TaskState

MAX_WATCHERS = 16
"""How many Servers besides the sender may ask for a task's final state to be pushed to them
(``Backend.watch``); a waiter beyond that re-reads the state every ``RECHECK_SECONDS`` instead."""


@dataclass(slots=True)
class StateWrite:
    """One state to store; ``reply_to`` is the channel to publish a final state on ("" = none);
    ``if_absent`` stores it only where no state is yet (a follow-up's PENDING, which its worker
    may have overtaken; a PENDING at send, which must not undo a finished run of the same id);
    ``unless_final`` stores it only where the state is not final (a STARTED or RETRY mark,
    written after its settle: another copy of the message may have finished in between)."""

    queue: str
    task_id: str
    state: bytes
    reply_to: str = ""
    if_absent: bool = False
    unless_final: bool = False


class Backend(Protocol):
    """Task states and results, kept for ``results_expire_in`` seconds."""

    reply_channel: str
    """The channel this Server's waiters hear finished states on."""

    async def get_state(self, queue: str, task_id: str) -> TaskState | None:
        """The stored state, or None when there is none (never sent, or expired)."""

    async def watch(self, queue: str, task_id: str) -> TaskState | None:
        """Like ``get_state``, and ask for the final state to be published to ``reply_channel``
        (atomically with the read; not once ``MAX_WATCHERS`` other channels asked)."""

    async def report_progress(self, queue: str, task_id: str, value: bytes, reply_to: str) -> None:
        """Store a running task's latest progress (JSON) and push it to whoever waits for the
        task (its sender on ``reply_to``, and the Servers that ``watch`` it)."""

    async def get_progress(self, queue: str, task_id: str) -> bytes | None:
        """The task's latest reported progress (JSON), or None."""

    async def store(self, writes: Sequence[StateWrite]) -> None:
        """Store states (used when the backend is not the broker's Redis) and publish the final
        ones to their ``reply_to`` and to the channels that asked through ``watch``."""


class BrokerStates(Protocol):
    """The broker's view of a task while it is queued: with a separate backend, the states the
    broker derives from its message record rather than stores (RECEIVED, PENDING)."""

    async def current_state(self, queue: str, task_id: str) -> TaskState | None:
        """PENDING (waiting or delayed) or RECEIVED (claimed), or None if the broker does not
        hold the message (not sent yet, or settled)."""
