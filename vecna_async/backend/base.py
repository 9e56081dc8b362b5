"""What a result backend does, as a small Protocol. ``RedisBackend`` implements it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vecna_async.messages import TaskState


@dataclass(slots=True)
class StateWrite:
    """One state to store; ``reply_to`` is the channel to publish a final state on ("" = none);
    ``if_absent`` stores it only where no state is yet (a follow-up's PENDING, which its worker
    may have overtaken)."""

    queue: str
    task_id: str
    state: bytes
    reply_to: str = ""
    if_absent: bool = False


class Backend(Protocol):
    """Task states and results, kept for ``results_expire_in`` seconds."""

    reply_channel: str
    """The channel this Server's waiters hear finished states on."""

    async def get_state(self, queue: str, task_id: str) -> TaskState | None:
        """The stored state, or None when there is none (never sent, or expired)."""

    async def watch(self, queue: str, task_id: str) -> TaskState | None:
        """Like ``get_state``, and ask for the final state to be published to ``reply_channel``."""

    async def store(self, writes: Sequence[StateWrite]) -> None:
        """Store states (used when the backend is not the broker's Redis)."""
