"""``AsyncResult`` and the one listener per Server that wakes every waiting result.

Workers publish finished states to the sending Server's reply channel (one message per settled
batch). The listener holds one pub/sub connection and resolves the waiters by task id, so a web app
awaiting a thousand results uses one connection, and a result arrives as soon as it is stored. A
waiter also reads the stored state before it waits (the task may be done already) and re-reads it
now and then, so a message lost during a reconnect delays a result but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from vecna_async.backend.base import Backend, BrokerStates
from vecna_async.exceptions import ResultTimeout, TaskCanceled, TaskFailed
from vecna_async.messages import State, TaskState, decode_state
from vecna_async.redis_errors import redis_errors

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from vecna_async.connection import AnyRedis
    from vecna_async.tasks.signature import Signature

log = logging.getLogger("vecna_async.results")
T = TypeVar("T")
RECHECK_SECONDS = 1.0
SUBSCRIBE_CONFIRM_SECONDS = 5.0
"""How long a waiter trusts the listener before it reads the stored state itself."""


class ResultListener:
    """One pub/sub subscription per Server; resolves waiters by task id.

    ``generation`` counts subscriptions (0: none yet). A result sent while the listener was
    subscribed, with no reconnect since, cannot have been published unheard: its waiter skips the
    first read of the stored state and takes the state from the channel (or from ``_recent``, the
    states that arrived before anyone waited), one round trip less per ``get()``.
    """

    RECENT = 10_000

    def __init__(self, client: AnyRedis, channel: str, where: str = "Redis") -> None:
        self._client = client
        self._channel = channel
        self._where = where
        self._waiters: dict[str, set[asyncio.Future[bytes]]] = {}
        # progress_updates() iterators, by task id: ("progress", value) / ("state", state)
        self._updates: dict[str, set[asyncio.Queue[tuple[str, bytes]]]] = {}
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._started: asyncio.Lock | None = None
        self.generation = 0

    async def _ensure_started(self) -> None:
        if self._reader is not None and not self._reader.done():
            return
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if self._reader is not None and not self._reader.done():
                return
            pubsub = self._client.pubsub()
            try:
                # Confirmed before anyone relies on it: Redis down or an ACL refusing the channel
                # (NOPERM) is raised to the caller as ours, not retried unseen by the reader.
                with redis_errors(self._where, "subscribing to its result channel"):
                    await pubsub.subscribe(self._channel)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SUBSCRIBE_CONFIRM_SECONDS):
                            while not await pubsub.get_message(timeout=SUBSCRIBE_CONFIRM_SECONDS):
                                pass
            except BaseException:
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
                raise
            self._pubsub = pubsub
            self.generation += 1
            self._reader = asyncio.create_task(self._read(pubsub), name="vecna-result-listener")

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis-py reconnects and resubscribes on the next call
                log.warning("result listener lost its connection (%s); reconnecting", exc)
                self.generation += 1
                self._wake_all()
                await asyncio.sleep(0.2)
                continue
            if message and message.get("type") == "message":
                self._dispatch(message["data"])

    def _dispatch(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            raw_id, _, state = line.partition(b"\t")
            if not raw_id:
                continue
            task_id = raw_id.decode()
            updates = self._updates.get(task_id)
            if state.startswith(b"@"):  # a progress report, not a state (lua/progress.lua)
                for queue in updates or ():
                    queue.put_nowait(("progress", state[1:]))
                continue
            for queue in updates or ():
                queue.put_nowait(("state", state))
            futures = self._waiters.get(task_id)
            if futures:
                for fut in futures:
                    if not fut.done():
                        fut.set_result(state)
            else:
                self._recent[task_id] = state
                if len(self._recent) > self.RECENT:
                    self._recent.popitem(last=False)

    def _wake_all(self) -> None:
        """After a reconnect: make every waiter read its state (a publish may have been missed)."""
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_result(b"")
        for queues in self._updates.values():
            for queue in queues:
                queue.put_nowait(("state", b""))

    @contextlib.asynccontextmanager
    async def updates(self, task_id: str) -> AsyncIterator[asyncio.Queue[tuple[str, bytes]]]:
        """The progress reports and states published for ``task_id`` while the block runs."""
        await self._ensure_started()
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._updates.setdefault(task_id, set()).add(queue)
        try:
            yield queue
        finally:
            _discard(self._updates, task_id, queue)

    async def wait(
        self,
        backend: Backend,
        queue: str,
        task_id: str,
        timeout: float | None,
        sent_in_generation: int = 0,
    ) -> TaskState:
        """Wait for the task's final state; raise ResultTimeout when ``timeout`` passes first."""
        await self._ensure_started()
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        state = None
        heard_everything = sent_in_generation == self.generation and sent_in_generation > 0
        if heard_everything:
            heard = self._recent.pop(task_id, None)
            if heard is not None:
                if not heard:  # a state too large to publish: it is stored, read it
                    heard_everything = False
                elif (early := decode_state(heard)).is_completed():
                    return early
        read = "get" if heard_everything else "watch"
        while True:
            fut: asyncio.Future[bytes] = loop.create_future()
            self._waiters.setdefault(task_id, set()).add(fut)
            try:
                # registered before reading: a publish between the two is not missed
                if read == "watch":
                    state = await backend.watch(queue, task_id)
                elif read == "get" and not heard_everything:
                    state = await backend.get_state(queue, task_id)
                heard_everything = False  # from the second round on, read the state each time
                if state is not None and state.is_completed():
                    return state
                wait = RECHECK_SECONDS
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise ResultTimeout(task_id, timeout or 0.0, _state_name(state))
                try:
                    payload = await asyncio.wait_for(fut, wait)
                except TimeoutError:
                    read = "get"
                    continue
                read = "get"
                if payload:
                    state = decode_state(payload)
                    if state.is_completed():
                        return state
            finally:
                _discard(self._waiters, task_id, fut)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None


Canceler = Callable[[str, str], Awaitable[bool]]
"""Cancels a task (queue, id), running or not: ``Server.cancel_task``."""


class ResultSource:
    """What an AsyncResult reads from: the backend and the Server's listener, and with a
    separate backend the broker's state read (``broker_states``), which tells RECEIVED (and
    PENDING) from the message record: the backend stores neither."""

    def __init__(
        self,
        backend: Backend,
        listener: ResultListener,
        broker_states: BrokerStates | None = None,
        cancel: Canceler | None = None,
    ) -> None:
        self.backend = backend
        self.listener = listener
        self.broker_states = broker_states
        self.cancel = cancel

    async def get_state(self, queue: str, task_id: str) -> TaskState | None:
        state = await self.backend.get_state(queue, task_id)
        if self.broker_states is None or not _may_be_received(state):
            return state
        queued = await self.broker_states.current_state(queue, task_id)
        if queued is None:  # not (or no longer) in the broker: the backend knows best
            return state
        if state is None or queued.state is State.RECEIVED:
            return queued
        return state


class AsyncResult(Generic[T]):
    """The handle of a sent task.

    >>> # r = await server.send_task(Signature("add", args=[1, 1]))
    >>> # await r.get(timeout=5.0)  -> 2
    """

    def __init__(
        self,
        source: ResultSource,
        task_id: str,
        queue: str,
        signature: Signature | None = None,
        result_type: Any = Any,
        sent_in_generation: int = 0,
    ) -> None:
        self._source = source
        self.task_id = task_id
        self.queue = queue
        self.signature = signature
        self._result_type = result_type
        self._generation = sent_in_generation

    def typed(self, result_type: Any) -> AsyncResult[Any]:
        """The same result, converting the value to ``result_type`` (msgspec) in ``get()``."""
        return AsyncResult(
            self._source, self.task_id, self.queue, self.signature, result_type, self._generation
        )

    async def get_state(self) -> TaskState | None:
        """The current TaskState, or None if none is stored (unknown id, or expired)."""
        return await self._source.get_state(self.queue, self.task_id)

    async def progress(self) -> Any:
        """The latest value the task reported with ``ctx.report_progress``, or None."""
        stored = await self._source.backend.get_progress(self.queue, self.task_id)
        return msgspec.json.decode(stored) if stored is not None else None

    async def progress_updates(self) -> AsyncIterator[Any]:
        """Each value the task reports (``ctx.report_progress``), pushed as it comes, until the
        task finishes (then the iteration ends; ``get()`` has the result). The latest value
        reported before the iteration began comes first. A value may come twice (reported just
        as the iteration began), never is one skipped while the listener is connected.

        >>> # async for value in result.progress_updates():
        >>> #     yield f"data: {json.dumps(value)}\n\n"     # server-sent events
        """
        source = self._source
        async with source.listener.updates(self.task_id) as updates:
            state = await source.backend.watch(self.queue, self.task_id)
            latest = await source.backend.get_progress(self.queue, self.task_id)
            if latest is not None:
                yield msgspec.json.decode(latest)
            while state is None or not state.is_completed():
                try:
                    kind, payload = await asyncio.wait_for(updates.get(), RECHECK_SECONDS)
                except TimeoutError:  # re-read now and then: a publish may have been missed
                    kind, payload = "state", b""
                if kind == "progress":
                    yield msgspec.json.decode(payload)
                elif payload:
                    state = decode_state(payload)
                else:
                    state = await source.get_state(self.queue, self.task_id)

    async def cancel(self) -> bool:
        """Cancel this task (same as ``server.cancel_task(r.task_id)``): a queued or delayed task
        never runs; a running one is stopped in its worker. True if it will not finish on its
        own (it had not finished)."""
        if self._source.cancel is None:
            raise RuntimeError("this AsyncResult was not made by a Server: it cannot cancel")
        return await self._source.cancel(self.queue, self.task_id)

    async def get(self, timeout: float | None = None) -> T:
        """Wait for the task and return its value (a tuple if it returned several).

        Raises TaskFailed (with the task's error string), TaskCanceled, or ResultTimeout.
        """
        state = await self._source.listener.wait(
            self._source.backend, self.queue, self.task_id, timeout, self._generation
        )
        return self._value(state)

    def _value(self, state: TaskState) -> T:
        if state.state is State.FAILURE:
            raise TaskFailed(self.task_id, state.task_name, state.error, state.traceback)
        if state.state is State.CANCELED:
            raise TaskCanceled(self.task_id, state.task_name)
        value = state.value()
        if self._result_type is Any:
            return value  # type: ignore[no-any-return]
        try:
            return msgspec.convert(value, self._result_type, strict=False)  # type: ignore[no-any-return]
        except (msgspec.ValidationError, TypeError):
            return value  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_id} queue={self.queue!r}>"


def _may_be_received(state: TaskState | None) -> bool:
    """Whether the broker may know better: it was claimed since this state was stored (the
    states a claim changes into RECEIVED: PENDING, RETRY), or none is stored yet (a follow-up
    whose PENDING its worker has yet to write)."""
    return state is None or state.state in (State.PENDING, State.RETRY)


def _state_name(state: TaskState | None) -> str | None:
    return state.state.value if state is not None else None


class ChainAsyncResult:
    """The results of a chain: ``get()`` waits for the last task (a failure earlier in the chain
    ends it: the last task's state then says which task failed and why)."""

    def __init__(self, results: list[AsyncResult[Any]]) -> None:
        self.results = results

    async def get(self, timeout: float | None = None) -> Any:
        return await self.results[-1].get(timeout)

    async def get_state(self) -> TaskState | None:
        return await self.results[-1].get_state()

    def __repr__(self) -> str:
        return f"<ChainAsyncResult {[r.task_id for r in self.results]}>"


class ChordAsyncResult:
    """The results of a chord: ``get()`` waits for the callback; ``group_results`` are the
    members'. If a member fails for good, the callback's state is FAILURE saying which."""

    def __init__(self, group_results: list[AsyncResult[Any]], callback: AsyncResult[Any]) -> None:
        self.group_results = group_results
        self.callback = callback

    async def get(self, timeout: float | None = None) -> Any:
        return await self.callback.get(timeout)

    async def get_state(self) -> TaskState | None:
        return await self.callback.get_state()

    def __repr__(self) -> str:
        return f"<ChordAsyncResult callback={self.callback.task_id}>"


def _discard(registry: dict[str, set[T]], task_id: str, item: T) -> None:
    """Take ``item`` off ``task_id``'s set in ``registry``; the set goes with its last item."""
    items = registry.get(task_id)
    if items is not None:
        items.discard(item)
        if not items:
            del registry[task_id]
