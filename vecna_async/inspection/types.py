"""What the inspection API returns: one frozen dataclass per thing an operator looks at.

Times are timezone-aware UTC datetimes from Redis's clock (every host agrees on it), and they
encode as ISO 8601 UTC strings (``2024-05-01T10:20:00.123000Z``): ``to_json`` is what
``vecna-async ... --json`` and the dashboard's ``/api/inspect`` print. Fields may be added at the
end in later releases; none is renamed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, overload

import msgspec

from vecna_async.messages import State
from vecna_async.worker.presence import WorkerInfo

__all__ = [
    "DeadLetterInfo",
    "DelayedTask",
    "PeriodicInfo",
    "QueueInfo",
    "RunningTask",
    "Snapshot",
    "TaskInfo",
    "WorkerInfo",
    "to_json",
]


@dataclass(frozen=True)
class QueueInfo:
    """How many messages a queue holds, by where they are."""

    name: str
    ready: int  # waiting for a worker
    delayed: int  # waiting for their ETA or a retry
    running: int  # leased to a worker
    dead_letters: int
    parked: int  # of tasks no worker that claimed them knows: waiting for one that does
    held: int = 0  # held back by their task's concurrency_limit or rate_limit


@dataclass(frozen=True)
class RunningTask:
    """A task a worker runs right now (its message is leased)."""

    id: str
    name: str
    worker: str  # "" when claimed by an older release, which did not record it
    lease_deadline: datetime  # when another worker may take it unless the lease is renewed
    started: datetime | None  # when this delivery was claimed
    queue: str = ""


@dataclass(frozen=True)
class DelayedTask:
    """A task waiting for its ETA or its retry time."""

    id: str
    name: str
    due: datetime
    queue: str = ""


@dataclass(frozen=True)
class PeriodicInfo:
    """A periodic definition: what fires, on which schedule, when next and when last.

    ``quarantined`` is None for a definition that fires; for one no scheduler can fire it says
    why (``spec``, ``tz``, ``kind`` and ``tasks`` are then what could be read of it, maybe "").
    """

    code: str
    spec: str
    tz: str
    kind: str  # task, group, chain or chord
    tasks: list[str]  # the task names it sends (a chain's links in order; a chord's callback last)
    next_fire: datetime | None
    last_fire: datetime | None  # None: not fired since this release's schedulers run it
    quarantined: str | None = None
    queues: list[str] = field(default_factory=list)  # the queues its messages go to


@dataclass(frozen=True)
class DeadLetterInfo:
    """A message given up on, and why."""

    id: str
    name: str
    reason: str
    when: datetime
    deliveries: int
    queue: str = ""


@dataclass(frozen=True)
class TaskInfo:
    """One task by id: its state, and what its message still says.

    ``place`` is where its message is: ready, delayed, running, parked, held or dead; "" once
    the message is gone (the task finished: only its state is left, for ``results_expire_in``).
    ``args``/``kwargs`` are None once the message is gone. ``attempt`` is the run it is at
    (1 first; what ``ctx.attempt`` says), ``deliveries`` how often the current attempt was handed
    to a worker without an outcome. Timings: ``eta`` (when it was due, if sent with one or
    retrying), ``started`` (when the current delivery was claimed, while it runs) and ``dead_at``;
    finished states carry no time.
    """

    id: str
    queue: str
    name: str
    state: State
    place: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    result: Any
    error: str
    traceback: str
    attempt: int
    retry_count: int
    deliveries: int
    eta: datetime | None
    started: datetime | None
    worker: str
    lease_deadline: datetime | None
    dead_reason: str
    dead_at: datetime | None
    progress: Any


@dataclass(frozen=True)
class Snapshot:
    """One look at the deployment: what ``vecna-async inspect`` shows, at Redis time ``time``."""

    queues: list[QueueInfo]
    workers: list[WorkerInfo]
    periodic: list[PeriodicInfo]
    time: datetime


@overload
def utc(ms: int) -> datetime: ...  # pragma: no cover
@overload
def utc(ms: None) -> None: ...  # pragma: no cover
@overload
def utc(ms: int | None) -> datetime | None: ...  # pragma: no cover
def utc(ms: int | None) -> datetime | None:
    """Epoch milliseconds (Redis's clock) as an aware UTC datetime; None stays None."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


_encoder = msgspec.json.Encoder()


def to_json(value: Any) -> bytes:
    """``value`` (any of the types above, or lists and dicts of them) as JSON, times as ISO 8601
    UTC strings."""
    return _encoder.encode(value)
