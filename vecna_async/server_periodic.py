"""The periodic half of ``Server``: schedules declared in code (``@server.periodic``) and sent
(``send_periodic_*``), canceled by code. A mixin of ``vecna_async.server.Server``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from vecna_async.messages import TaskMessage
from vecna_async.scheduler.periodic import new_definition
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import prepare_chain
from vecna_async.tasks.workflows import Chain, Chord, Group

if TYPE_CHECKING:
    from vecna_async.config import Config
    from vecna_async.runtime import Runtime
    from vecna_async.scheduler.declared import DeclaredSchedules
    from vecna_async.tasks.registry import TaskDecorator, TaskHandle, TaskRegistry

P = ParamSpec("P")
R = TypeVar("R")


class PeriodicMixin:
    """``Server``'s periodic methods."""

    config: Config
    registry: TaskRegistry
    declared: DeclaredSchedules

    def _runtime(self) -> Runtime:
        raise NotImplementedError  # (Server's)

    def _prepare(self, sig: Signature) -> TaskMessage:
        raise NotImplementedError  # (Server's)

    def task(self, fn: None = None, /, *, name: str | None = None, **options: Any) -> TaskDecorator:
        raise NotImplementedError  # (Server's)

    def periodic(
        self,
        spec: str,
        *,
        name: str | None = None,
        tz: str | None = None,
        code: str | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, Awaitable[R]]], TaskHandle[P, R]]:
        """Register the function as a task (as ``task()``, with ``options``) run on the cron
        ``spec`` in zone ``tz`` (default UTC), without arguments.

        The schedule is stored under ``code`` (default: the task name) when a worker or an
        embedded scheduler of this Server starts, replacing what that code held: declaring it in
        every process never duplicates a tick. A bad spec raises InvalidCronSpec here.

        >>> # @server.periodic("0 6 * * *", name="report", tz="Europe/Paris")
        >>> # async def report() -> None: ...
        """

        def register(f: Callable[P, Awaitable[R]]) -> TaskHandle[P, R]:
            handle = self.task(name=name or f.__name__, **options)(f)
            self.declared.declare(spec, task=handle.name, tz=tz, code=code)
            return handle

        return register

    async def _send_periodic(
        self,
        spec: str,
        kind: str,
        tasks: list[TaskMessage],
        code: str,
        tz: str | None,
        callback: TaskMessage | None = None,
        concurrency: int = 0,
    ) -> str:
        """Store a periodic definition under ``code``, replacing what the code held (keeping its
        next fire time when spec and zone are unchanged: ``PeriodicStore.add``)."""
        rt = self._runtime()
        definition = new_definition(
            spec, tz, code, kind, tasks, callback, concurrency, cluster=rt.cluster, signer=rt.signer
        )
        await rt.periodic.add(definition)
        return code

    async def send_periodic_task(
        self, spec: str, signature: Signature, *, tz: str | None = None
    ) -> str:
        """Run ``signature`` on a cron ``spec`` (5 fields, or 6 with seconds first; ``?`` = ``*``;
        ``@hourly``...) in time zone ``tz`` (default UTC). Stored in Redis: it survives restarts
        and fires exactly once per tick however many schedulers run. Returns the code to cancel
        it with (also set on ``signature.code``): ``signature.code`` if set, else its ``id`` if
        set (either replaces the schedule stored under it: send it at every start without
        duplicating it), else a new one."""
        msg = self._prepare(signature)
        return await self._send_periodic(spec, "task", [msg], msg.code, tz)

    async def send_periodic_group(
        self, spec: str, group: Group, concurrency: int = 0, *, tz: str | None = None
    ) -> str:
        """Send ``group`` on ``spec``; its code is ``group.group_id`` (``Group(..., group_id=)``
        fixes it: sending again replaces)."""
        msgs = [self._prepare(s) for s in group.tasks]
        return await self._send_periodic(spec, "group", msgs, group.group_id, tz, None, concurrency)

    async def send_periodic_chain(self, spec: str, chain: Chain, *, tz: str | None = None) -> str:
        """Send ``chain`` on ``spec``; its code is its first task's ``code`` (or ``id``)."""
        head = prepare_chain(
            chain, self.config.default_queue, self._runtime().backend.reply_channel, self.registry
        )
        return await self._send_periodic(spec, "chain", [head], head.code, tz)

    async def send_periodic_chord(
        self, spec: str, chord: Chord, concurrency: int = 0, *, tz: str | None = None
    ) -> str:
        """Send ``chord`` on ``spec``; its code is ``chord.group.group_id``."""
        members = [self._prepare(s) for s in chord.group.tasks]
        callback = self._prepare(chord.callback)
        code = chord.group.group_id
        return await self._send_periodic(spec, "chord", members, code, tz, callback, concurrency)

    async def cancel_periodic_task(self, code: str) -> bool:
        """Stop a periodic task, group, chain or chord by its code; True if it existed. (A schedule
        declared with ``@server.periodic`` is written again by the next start that declares it.)"""
        return await self._runtime().periodic.cancel(code)

    async def write_declared_schedules(self) -> None:
        """Store every ``@server.periodic`` schedule of this Server (replacing, under its code:
        see ``PeriodicStore.add``). Workers and embedded schedulers call it when they start."""
        for d in self.declared:
            msg = self._prepare(Signature(d.task, code=d.code))
            await self._send_periodic(d.spec, "task", [msg], d.code, d.tz)
