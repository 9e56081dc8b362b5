"""Every Redis key and channel name vecna_async uses, built in this one place.

Layout for a queue ``q`` under the prefix ``vecna`` (the ``{q}`` hash tag keeps all keys of a queue
in one Redis Cluster slot, so every Lua script touches a single slot)::

    vecna:{q}:ready          ZSET  id -> order score (priority, then FIFO by sequence)
    vecna:{q}:delayed        ZSET  id -> due time (epoch ms): ETA tasks and retries
    vecna:{q}:leases         ZSET  id -> lease deadline, on the queue's lease clock (ms)
    vecna:{q}:clock          STR   the lease clock: "<Redis time ms> <lease clock ms>" at the last
                                   claim or heartbeat (see lua/_lib.lua lease_clock)
    vecna:{q}:dead           ZSET  id -> time it was dead-lettered (epoch ms)
    vecna:{q}:dead_pending   ZSET  dead-lettered ids whose aftermath (on_error callbacks, a stopped
                                   chain, a failed chord) a worker has yet to settle -> when to
                                   offer it again
    vecna:{q}:wake           LIST  wake-up tokens for idle workers (a hint: workers also poll)
    vecna:{q}:seq            STR   enqueue sequence (FIFO order inside a priority)
    vecna:{q}:m:<id>         HASH  the message record: b=body n=name p=order score d=deliveries
                                   o=lease token of the current delivery r=reply channels
                                   i=ignore-if-unregistered e=dead-letter reason t=when
                                   k=aftermath settled; while o is set (leased), also w=the
                                   worker holding it and c=when it claimed it (epoch ms,
                                   Redis's clock): written by the claim in the same HSET, left
                                   stale once the delivery ends (the next claim rewrites them)
    vecna:{q}:s:<id>         STR   the task's TaskState (JSON), expires after results_expire_in
    vecna:{q}:p:<id>         STR   the task's latest reported progress (JSON), same expiry
    vecna:{q}:w:<id>         SET   with a separate result backend, on it: the reply channels of
                                   other Servers waiting for the task (capped), same expiry
    vecna:{q}:parked         SET   names of parked tasks (claimed by workers that did not know them)
    vecna:{q}:parked:<name>  ZSET  parked ids of that task name, with their order score
    vecna:{q}:parked_since   ZSET  parked id -> when it was parked (epoch ms): after
                                   RedisConfig.parked_max_age it is dead-lettered
    vecna:{q}:req:<token>    STR   idempotency record of one enqueue/claim/settle call (redis-py
                                   and our own retries resend a call whose reply was lost)
    vecna:{q}:fired:<code>   HASH  periodic code's chunk of messages -> the last tick enqueued
                                   into this queue (epoch ms): a tick fires at most once, however
                                   many schedulers fire it; expires a day after the last firing
    vecna:{q}:tombstones     ZSET  canceled ids that must never run -> until when (epoch ms; +inf
                                   for an id not enqueued yet: a canceled chain link or chord
                                   callback waits for its predecessor however long that takes)
    vecna:{q}:g:<group id>   HASH  chord member index -> its results (q: the callback's queue);
                                   no expiry until the chord fires or fails
    vecna:{q}:g:<gid>:fired  STR   set once when the chord callback was sent (or "failed")
    vecna:{q}:limit:c:<name> ZSET  ids of that task leased right now (its concurrency_limit)
    vecna:{q}:limit:r:<name> ZSET  starts of that task in its rate window -> when (epoch ms)
    vecna:{q}:held:<name>    ZSET  ids of that task held back by its limit, with their order score
    vecna:{q}:held_due       ZSET  task name -> when its held messages may be tried again
    vecna:{q}:limit_specs    HASH  task name -> its limits as the last held message stated them
    vecna:{q}:probe:a|b      (never written) a two-key probe every script makes before writing:
                                   it fails while the slot migrates between Cluster nodes
    vecna:queues             ZSET  queue -> when a delayed entry was last added (for schedulers;
                                   pruned when idle for a day)
    vecna:{periodic}:defs    HASH  code -> periodic definition
    vecna:{periodic}:next    ZSET  code -> next fire time (epoch ms)
    vecna:{periodic}:bad     HASH  code -> a definition no scheduler can fire: raw, reason, when
    vecna:{periodic}:last    HASH  code -> the last tick fired (epoch ms): written by the
                                   scheduler that advanced the definition, dropped on cancel
    vecna:{workers}:index    ZSET  worker name -> its last heartbeat (epoch ms, Redis's clock);
                                   an entry whose HASH below has expired is pruned by readers and
                                   by other workers' heartbeats
    vecna:{workers}:w:<name> HASH  a live worker (worker/presence.py): host pid queues
                                   concurrency running started last_seen done failed; expires
                                   after PRESENCE_BEATS heartbeat intervals without a heartbeat,
                                   deleted when the worker stops gracefully

Keys of the previous release that are still read: ``vecna:{q}:x:<id>`` (a cancel tombstone) while
``vecna:{q}:canceling`` exists (both expire within ``results_expire_in``), and a ``vecna:queues``
SET (converted to the ZSET on first use).

Channels: ``vecna:reply:<server id>`` (finished results for one Server's waiters),
``vecna:sched`` (an entry was added that is earlier than the scheduler may know about) and
``vecna:cancel`` ("<queue> <id>": a running task was canceled; its worker stops it).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import msgspec

_SAFE = re.compile(r"^[A-Za-z0-9_.:@/+=\-]{1,200}$")


def check_name(kind: str, value: str) -> str:
    """Reject ids, queue and task names that would break a key or the JSON Lua writes.

    >>> check_name("task id", "a b")
    Traceback (most recent call last):
    ValueError: task id 'a b' may only use letters, digits and _ . : @ / + = - (1-200 characters)
    """
    if not _SAFE.match(value):
        raise ValueError(
            f"{kind} {value!r} may only use letters, digits and _ . : @ / + = - (1-200 characters)"
        )
    return value


class QueueKeys(NamedTuple):
    """The keys of one queue, in the order every queue script receives them packed
    (``Keys.packed_queue``; ``lua/_lib.lua``'s ``queue_from`` reads them back by position)."""

    ready: str
    delayed: str
    leases: str
    dead: str
    wake: str
    seq: str
    record_prefix: str
    state_prefix: str
    parked: str
    parked_prefix: str
    request_prefix: str
    tombstones: str
    chord_prefix: str
    dead_pending: str
    clock: str
    probe_a: str
    probe_b: str
    legacy_tombstone_prefix: str
    legacy_canceling: str
    limit_prefix: str
    held_prefix: str
    held_due: str
    limit_specs: str
    progress_prefix: str
    watchers_prefix: str
    parked_since: str
    fired_prefix: str

    def record(self, task_id: str) -> str:
        return self.record_prefix + task_id

    def state(self, task_id: str) -> str:
        return self.state_prefix + task_id

    def progress(self, task_id: str) -> str:
        return self.progress_prefix + task_id

    def watchers(self, task_id: str) -> str:
        return self.watchers_prefix + task_id

    def chord_results(self, group_id: str) -> str:
        return self.chord_prefix + group_id

    def chord_fired(self, group_id: str) -> str:
        return self.chord_results(group_id) + ":fired"

    def periodic_fired(self, code: str) -> str:
        return self.fired_prefix + code


class Keys:
    """Builds key and channel names under one prefix (``RedisConfig.key_prefix``)."""

    def __init__(self, prefix: str = "vecna") -> None:
        check_name("key prefix", prefix)
        self.prefix = prefix
        self.queues = f"{prefix}:queues"
        self.sched_channel = f"{prefix}:sched"
        self.cancel_channel = f"{prefix}:cancel"
        self.periodic_defs = f"{prefix}:{{periodic}}:defs"
        self.periodic_next = f"{prefix}:{{periodic}}:next"
        self.periodic_bad = f"{prefix}:{{periodic}}:bad"
        self.periodic_last = f"{prefix}:{{periodic}}:last"
        self.periodic_request_prefix = f"{prefix}:{{periodic}}:req:"
        self.workers_index = f"{prefix}:{{workers}}:index"
        self.worker_prefix = f"{prefix}:{{workers}}:w:"

    def worker(self, name: str) -> str:
        """The HASH describing one live worker (see ``worker/presence.py``)."""
        return self.worker_prefix + name

    def reply_channel(self, server_id: str) -> str:
        return f"{self.prefix}:reply:{server_id}"

    def queue(self, name: str) -> QueueKeys:
        return _queue_keys(self.prefix, name)

    def packed_queue(self, name: str) -> bytes:
        """The queue's keys and name as one msgpack array: how every queue script takes them
        (``lua/_lib.lua``'s ``queue_from``)."""
        return _packed_queue(self.prefix, name)


@lru_cache(maxsize=1024)
def _queue_keys(prefix: str, queue: str) -> QueueKeys:
    check_name("queue name", queue)
    base = f"{prefix}:{{{queue}}}:"
    return QueueKeys(
        ready=base + "ready",
        delayed=base + "delayed",
        leases=base + "leases",
        dead=base + "dead",
        wake=base + "wake",
        seq=base + "seq",
        record_prefix=base + "m:",
        state_prefix=base + "s:",
        parked=base + "parked",
        parked_prefix=base + "parked:",
        request_prefix=base + "req:",
        tombstones=base + "tombstones",
        chord_prefix=base + "g:",
        dead_pending=base + "dead_pending",
        clock=base + "clock",
        probe_a=base + "probe:a",
        probe_b=base + "probe:b",
        legacy_tombstone_prefix=base + "x:",
        legacy_canceling=base + "canceling",
        limit_prefix=base + "limit:",
        held_prefix=base + "held:",
        held_due=base + "held_due",
        limit_specs=base + "limit_specs",
        progress_prefix=base + "p:",
        watchers_prefix=base + "w:",
        parked_since=base + "parked_since",
        fired_prefix=base + "fired:",
    )


@lru_cache(maxsize=1024)
def _packed_queue(prefix: str, queue: str) -> bytes:
    return msgspec.msgpack.encode([*_queue_keys(prefix, queue), queue])
