"""The wire format: every structure vecna_async stores in or reads from Redis.

Messages are msgspec Structs encoded as JSON (readable with ``redis-cli``, no pickle). The task
message carries a format version in its ``v`` tag; a reader that meets a version it does not know
fails to decode it and the worker dead-letters it with the reason instead of guessing.

Encoders and typed decoders are built once, here, and shared.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec

FORMAT_VERSION = 1


class State(StrEnum):
    """The states a task moves through (the seed's list)."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELED = "CANCELED"


FINAL_STATES = frozenset({State.SUCCESS, State.FAILURE, State.CANCELED})


class TaskMessage(
    msgspec.Struct, tag_field="v", tag=FORMAT_VERSION, omit_defaults=True, kw_only=True
):
    """A task on the wire: what a worker needs to run it and everything that follows it.

    ``args`` holds plain JSON values; ``arg_types`` (parallel to ``args``) keeps the seed's ``Arg``
    type strings so the worker can check them ("" for an untyped argument), ``arg_names`` their
    optional names. ``on_success``
    callbacks get the results prepended to their args; ``chain_next`` (the next link of a chain)
    gets them appended, as the seed's chain example computes.

    ``sig`` is the signature when ``Config.signing_keys`` is set (see ``vecna_async.signing``);
    it must stay the last field: a signed body is the unsigned one with ``,"sig":"..."`` before
    its closing brace. ``chord_args`` >= 0 marks a chord callback whose signature covers only its
    first ``chord_args`` args (the members' results are spliced in after signing).
    """

    id: str
    name: str
    queue: str
    args: list[Any] = []
    arg_types: list[str] = []
    arg_names: list[str] = []
    kwargs: dict[str, Any] = {}
    eta_ms: int = 0
    retry_count: int = 0
    retry_timeout: int = 0
    attempts: int = 0
    on_success: list[TaskMessage] = []
    on_error: list[TaskMessage] = []
    chord_callback: TaskMessage | None = None
    chain_next: TaskMessage | None = None
    group_id: str = ""
    group_task_count: int = 0
    group_index: int = 0
    immutable: bool = False
    priority: int = 0
    headers: dict[str, Any] = {}
    ignore_when_task_not_registered: bool = False
    code: str = ""
    spec: str = ""
    reply_to: str = ""
    concurrency_limit: int = 0
    rate_limit: str = ""
    timeout: float = 0.0
    tries: int = 0
    chord_args: int = -1
    sig: str = ""  # keep last (see above)


class TaskState(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A task's state as stored by the result backend (the seed's ``TaskState``).

    ``results`` holds the return values: one element for a single value, several for a tuple.
    """

    task_id: str
    state: State
    task_name: str = ""
    results: list[Any] | None = None
    error: str = ""
    traceback: str = ""

    def is_completed(self) -> bool:
        """True once the task succeeded, failed for good or was canceled."""
        return self.state in FINAL_STATES

    def is_success(self) -> bool:
        return self.state is State.SUCCESS

    def is_failure(self) -> bool:
        return self.state is State.FAILURE

    def is_canceled(self) -> bool:
        return self.state is State.CANCELED

    def value(self) -> Any:
        """The task's return value: None, the single value, or a tuple of several."""
        results = self.results or []
        if len(results) == 1:
            return results[0]
        return tuple(results) if results else None


class PeriodicDefinition(msgspec.Struct, tag_field="v", tag=FORMAT_VERSION, kw_only=True):
    """A periodic task, group, chain or chord as stored in Redis under its ``code``.

    ``tasks`` are templates: every firing gets fresh ids derived from (code, tick), so a tick
    fired by two schedulers enqueues the same ids and is deduplicated.
    """

    code: str
    spec: str
    tz: str
    kind: str  # "task", "group", "chain" or "chord"
    tasks: list[TaskMessage]
    callback: TaskMessage | None = None
    concurrency: int = 0
    sig: str = ""  # set when Config.signing_keys is: see vecna_async.signing


CHORD_RESULTS_MARK = "\x00vecna:chord-results\x00"
"""Where a chord callback's body is split for the members' results (``tasks.wire``)."""


class QuarantinedPeriodic(msgspec.Struct, frozen=True, kw_only=True):
    """A periodic definition no scheduler could fire, moved out of the schedule so that the others
    keep firing; stored as this JSON under its code in ``<prefix>:{periodic}:bad``.

    ``raw`` is the definition exactly as it was stored (base64 in the JSON: it may not even be
    text), ``reason`` what is wrong with it, ``quarantined_at_ms`` when (Redis's clock, epoch ms).
    """

    code: str
    reason: str
    raw: bytes
    quarantined_at_ms: int


class DeadLetter(msgspec.Struct, frozen=True):
    """A message a worker gave up on, with why. ``body`` is the raw stored message."""

    task_id: str
    reason: str
    deliveries: int
    body: bytes
    dead_at_ms: int


encode = msgspec.json.Encoder().encode
task_decoder = msgspec.json.Decoder(TaskMessage)
periodic_decoder = msgspec.json.Decoder(PeriodicDefinition)
quarantined_decoder = msgspec.json.Decoder(QuarantinedPeriodic)
state_decoder = msgspec.json.Decoder(TaskState)


def decode_task(data: bytes) -> TaskMessage:
    return task_decoder.decode(data)


def decode_state(data: bytes) -> TaskState:
    return state_decoder.decode(data)
