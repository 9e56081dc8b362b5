"""The canceling half of ``Server``: ``cancel_task`` (anything not finished) and the seed's
``cancel_delayed_*`` (only what has not started). A mixin of ``vecna_async.server.Server``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from vecna_async.keys import check_name
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.workflows import Chain, Chord, Group

if TYPE_CHECKING:
    from vecna_async.config import Config
    from vecna_async.runtime import Runtime


class CancelMixin:
    """``Server``'s cancel methods."""

    config: Config

    def _runtime(self) -> Runtime:
        raise NotImplementedError  # (Server's)

    async def cancel_task(self, task_id: str, queue: str | None = None) -> bool:
        """Cancel a task by id, whatever it is doing: a queued or delayed task never runs; a
        running one is stopped in its worker at once (an ``async def`` task is cancelled at its
        next ``await``; a plain ``def`` task running in a thread is abandoned: its slot is freed
        and its result dropped, the thread runs on to its end). Its state becomes CANCELED, and
        so do the states of what would have followed it (callbacks, later chain links, its
        chord's callback). True if it will not finish on its own; False if it had finished
        (or was dead-lettered). ``queue``: the task's queue (default ``default_queue``)."""
        cancel = self._runtime().results.cancel
        assert cancel is not None
        return await cancel(queue or self.config.default_queue, task_id)

    async def _cancel(self, sigs: Iterable[Signature], queue: str | None = None) -> bool:
        by_queue: dict[str, list[str]] = {}
        for sig in sigs:
            if sig.id is None:
                raise ValueError(f"task {sig.name!r} was never sent: it has no id to cancel")
            where = queue or sig.routing_key or self.config.default_queue
            by_queue.setdefault(where, []).append(sig.id)
        canceled = True
        for queue, ids in by_queue.items():
            canceled &= all(await self._runtime().broker.cancel(queue, ids))
        return canceled

    async def cancel_delayed_task(
        self, signature: Signature | str, *, queue: str | None = None
    ) -> bool:
        """Cancel a task that has not started, with an ETA or without (waiting in its queue):
        it never runs and its state becomes CANCELED. ``signature`` is the Signature sent or
        its task id; ``queue`` is where it was sent (default: the Signature's ``routing_key``,
        else ``default_queue``). Returns False if a worker had already started it."""
        if isinstance(signature, str):
            signature = Signature("?", id=check_name("task id", signature))
        return await self._cancel([signature], queue)

    async def cancel_delayed_group(self, group: Group) -> bool:
        """Cancel every task of a group that has not started (True if none will run)."""
        return await self._cancel(group.tasks)

    async def cancel_delayed_chain(self, chain: Chain) -> bool:
        """Cancel every link of a chain that has not started (True if none will run)."""
        return await self._cancel(chain.tasks)

    async def cancel_delayed_chord(self, chord: Chord) -> bool:
        """Cancel a chord's members and its callback (True if none of them will run)."""
        return await self._cancel([*chord.group.tasks, chord.callback])
