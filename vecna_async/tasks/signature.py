"""``Signature`` and ``Arg``: a task call as the user writes it.

>>> sig = Signature("add", args=[Arg("int64", 1), Arg("int64", 1)], retry_count=3)
>>> sig.name, sig.args[0].value
('add', 1)

A Signature is turned into the wire's ``TaskMessage`` when it is sent (``tasks.outgoing``), and back
into a Signature when a user inspects pending tasks or an error handler receives one.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from vecna_async.tasks.args import check_type_name
from vecna_async.tasks.limits import check_concurrency_limit, parse_rate_limit


@dataclasses.dataclass(slots=True)
class Arg:
    """A typed argument, as in the seed: ``Arg("int64", 1)``, ``Arg("[]string", ["a", "b"])``.

    The worker checks ``value`` against ``type`` before the task runs (range, bool-vs-int,
    string-vs-number, element types of slices) and fails the task with a clear error on a mismatch.
    """

    type: str
    value: Any
    name: str = ""

    def __post_init__(self) -> None:
        check_type_name(self.type)


@dataclasses.dataclass(slots=True)
class Signature:
    """A task call: the registered task ``name``, its arguments and execution options.

    ``id`` and ``code`` are filled in when the signature is sent (``code`` defaults to the group id
    inside a group, else the id). ``eta`` delays the task (a timezone-aware datetime; a naive one is
    taken as UTC). ``retry_count`` retries a failing task with Fibonacci back-off (1, 2, 3, 5, 8 ...
    seconds) unless ``retry_timeout`` (seconds) fixes the delay. ``on_success`` callbacks get this
    task's results prepended to their args unless this signature is ``immutable``; ``on_error``
    callbacks get the error string first. ``routing_key`` names the queue (default: the Server's
    ``default_queue``); a higher ``priority`` is served first within a queue.
    ``concurrency_limit`` (at most that many of this task running at once across all workers of
    the queue; 0: no limit) and ``rate_limit`` (``"100/s"``, ``/m``, ``/h``: at most that many
    starts per period) are usually given once, as options of ``@server.task``, like ``timeout``
    (seconds: a run that takes longer is stopped and fails with ``TaskTimeout``).
    """

    name: str
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    eta: datetime | None = None
    retry_count: int = 0
    retry_timeout: int = 0
    on_success: list[Signature] = dataclasses.field(default_factory=list)
    on_error: list[Signature] = dataclasses.field(default_factory=list)
    immutable: bool = False
    routing_key: str = ""
    priority: int = 0
    headers: dict[str, Any] = dataclasses.field(default_factory=dict)
    ignore_when_task_not_registered: bool = False
    id: str | None = None
    code: str | None = None
    _: dataclasses.KW_ONLY
    concurrency_limit: int = 0
    rate_limit: str = ""
    timeout: float | None = None
    group_id: str = ""
    group_task_count: int = 0
    chord_callback: Signature | None = None
    spec: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Signature needs a task name")
        if self.retry_count < 0 or self.retry_timeout < 0:
            raise ValueError("retry_count and retry_timeout must be >= 0")
        check_concurrency_limit(self.concurrency_limit)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (or None), got {self.timeout!r}")
        if self.rate_limit:
            parse_rate_limit(self.rate_limit)

    def copy(self) -> Signature:
        """A deep copy (callbacks included), with ``id`` and ``code`` kept."""
        return dataclasses.replace(
            self,
            args=list(self.args),
            kwargs=dict(self.kwargs),
            on_success=[s.copy() for s in self.on_success],
            on_error=[s.copy() for s in self.on_error],
            headers=dict(self.headers),
            chord_callback=self.chord_callback.copy() if self.chord_callback else None,
        )
