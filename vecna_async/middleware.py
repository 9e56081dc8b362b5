"""Middleware: your code around every send and every run (metrics, tracing, auditing).

Subclass ``Middleware``, define the hooks you need (the others cost nothing), register it::

    class Audit(Middleware):
        async def after_run(self, ctx: Context, outcome: Outcome) -> None:
            print(ctx.name, ctx.task_id, outcome.status, f"{outcome.duration:.3f}s")

    server.add_middleware(Audit())

The send hooks run in the sending process, around the one call that writes a send's messages
to Redis (``send_task``, ``send_tasks``, ``send_group``, ``send_chain``, ``send_chord``); the run
hooks in the worker, around each run of a task, in the run's own asyncio task (a context
variable set in ``before_run`` is seen by the task body and by ``after_run``).

- ``before_send(signature)``: once per Signature of the call (each task; each link of a chain;
  each member and then the callback of a chord), after its id, queue and task options were filled
  in and before anything is written. It may change ``signature.headers`` (e.g. add a trace
  context), and its callbacks' (``on_success``, ``on_error``); that is the only change taken
  over into the messages.
- ``after_send(signature, result, error)``: the same Signatures once the write succeeded
  (``result`` its AsyncResult, ``error`` None) or failed (``result`` None, ``error`` what the
  call raises to the caller).
- ``before_run(ctx)``: before the task function is called; ``ctx`` is the run's ``Context``
  (``task_id``, ``name``, ``queue``, ``attempt``, ``headers``, ``worker`` ...), the very object a
  task that takes a Context receives.
- ``on_retry(ctx, error, delay)``: the run failed and the task will run again in ``delay``
  seconds (``retry_count`` left, or ``RetryTaskLater``).
- ``after_run(ctx, outcome)``: after every run that ``before_run`` saw, whatever happened
  (``Outcome``: status, value or error, duration).

Periodic definitions and the messages a worker sends on its own (callbacks, a chain's next link,
a chord's callback, retries) pass through no send hook: their headers were set when the workflow
was sent.

Order: middlewares run in the order they were added, the ``after_*`` hooks in reverse, so the
first one added wraps all the others. A hook that raises is logged at ERROR on the
``vecna_async.middleware`` logger, naming the middleware's class, and skipped: the other
middlewares' hooks still run, and the send or the run goes on as if it had not been there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

from vecna_async.context import Context
from vecna_async.messages import State, TaskMessage
from vecna_async.tasks.wire import walk

if TYPE_CHECKING:
    from vecna_async.backend.results import AsyncResult
    from vecna_async.tasks.signature import Signature

log = logging.getLogger("vecna_async.middleware")
Status = Literal["success", "failure", "retry", "timeout", "canceled", "interrupted"]
HOOK_GRACE = 5.0
"""The longest an ``after_run`` of a stopped run may take (it runs shielded from the stop)."""

_STATES: dict[str, State | None] = {
    "success": State.SUCCESS,
    "failure": State.FAILURE,
    "timeout": State.FAILURE,
    "retry": State.RETRY,
    "canceled": State.CANCELED,
    "interrupted": None,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a task ended.

    ``status``: ``"success"`` (``value`` is what it returned), ``"failure"`` (failed for good;
    ``error``), ``"timeout"`` (failed for good by running past its ``timeout``; ``error`` is the
    TaskTimeout), ``"retry"`` (it will run again in ``retry_in`` seconds; ``error`` is why,
    possibly a TaskTimeout or a RetryTaskLater), ``"canceled"`` (``server.cancel_task`` stopped
    it), ``"interrupted"`` (the worker stopped, or lost the message's lease: the message goes
    back to the queue and runs again). ``duration``: seconds the run took.
    """

    status: Status
    duration: float
    value: Any = None
    error: BaseException | None = None
    retry_in: float | None = None

    @property
    def state(self) -> State | None:
        """The task's state after this run (a timeout is a FAILURE); None when interrupted."""
        return _STATES[self.status]


class Middleware:
    """Base class: every hook does nothing; override those you need (all ``async``)."""

    async def before_send(self, signature: Signature) -> None:
        """Before ``signature``'s message is written; may change ``signature.headers``."""

    async def after_send(
        self,
        signature: Signature,
        result: AsyncResult[Any] | None,
        error: BaseException | None,
    ) -> None:
        """After the write: ``result`` if it succeeded, else ``error`` (raised to the caller)."""

    async def before_run(self, ctx: Context) -> None:
        """Before the task function is called."""

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        """The run failed with ``error`` and the task runs again in ``delay`` seconds."""

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        """After the run, whatever happened."""


_HOOKS = ("before_send", "after_send", "before_run", "on_retry", "after_run")
Hook = tuple[str, Callable[..., Awaitable[None]]]


class Middlewares:
    """The middlewares of one Server, in order, with each hook's list kept ready: only hooks a
    middleware defines are called, and with none registered nothing is (``bool()`` is False)."""

    def __init__(self) -> None:
        self._all: list[object] = []
        self._hooks: dict[str, list[Hook]] = {name: [] for name in _HOOKS}

    def add(self, middleware: object) -> None:
        if not any(callable(getattr(middleware, name, None)) for name in _HOOKS):
            raise TypeError(
                f"{type(middleware).__name__} is not a middleware: it has none of the hooks "
                f"{', '.join(_HOOKS)} (subclass vecna_async.middleware.Middleware)"
            )
        self._all.append(middleware)
        for name in _HOOKS:
            fn = getattr(middleware, name, None)
            if callable(fn) and getattr(type(middleware), name, None) is not getattr(
                Middleware, name
            ):
                self._hooks[name].append((type(middleware).__name__, fn))

    def __bool__(self) -> bool:
        return bool(self._all)

    @property
    def wraps_runs(self) -> bool:
        """Whether any middleware has a run hook (else a worker runs tasks without building a
        Context or an Outcome for them)."""
        return any(self._hooks[name] for name in ("before_run", "on_retry", "after_run"))

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[object]:
        return iter(self._all)

    async def _call(self, hook: str, *args: Any) -> None:
        hooks = self._hooks[hook]
        for owner, fn in reversed(hooks) if hook.startswith("after") else hooks:
            try:
                await fn(*args)
            except Exception:
                sig = args[0]  # a send hook's Signature (a run hook's fields are bound already)
                fields = (
                    {"task_id": sig.id, "task_name": sig.name, "queue": sig.routing_key}
                    if hook.endswith("_send")
                    else None
                )
                what = "middleware %s: %s raised; carrying on without it"
                log.exception(what, owner, hook, extra=fields)

    # -- sending -------------------------------------------------------------------------------
    async def send(
        self,
        signatures: Sequence[Signature],
        messages: Sequence[TaskMessage],
        publish: Callable[[], Awaitable[None]],
        result_of: Callable[[TaskMessage, Signature], AsyncResult[Any]],
    ) -> None:
        """``publish`` the prepared ``messages`` with the send hooks around it, for each of
        ``signatures`` (whose messages are among ``messages`` or nested in them)."""
        if not (self._hooks["before_send"] or self._hooks["after_send"]):
            await publish()
            return
        by_id: dict[str, list[TaskMessage]] = {}  # (one Signature may be sent twice)
        for m in walk(messages):
            by_id.setdefault(m.id, []).append(m)
        for sig in signatures:
            await self._call("before_send", sig)
        for sig in signatures:
            for s in signature_tree(sig):
                for msg in by_id.get(s.id or "", ()):
                    if msg.headers is not s.headers:
                        msg.headers = s.headers  # a hook replaced the dict instead of editing it
        try:
            await publish()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for sig in signatures:
                    await self._call("after_send", sig, None, exc)
            raise
        for sig in signatures:
            sent = by_id.get(sig.id or "")
            await self._call("after_send", sig, result_of(sent[0], sig) if sent else None, None)

    # -- running -------------------------------------------------------------------------------
    async def before_run(self, ctx: Context) -> None:
        await self._call("before_run", ctx)

    async def on_retry(self, ctx: Context, error: BaseException, delay: float) -> None:
        await self._call("on_retry", ctx, error, delay)

    async def after_run(self, ctx: Context, outcome: Outcome) -> None:
        await self._call("after_run", ctx, outcome)

    async def after_stopped_run(self, ctx: Context, outcome: Outcome) -> None:
        """``after_run`` for a run that was cancelled: shielded from the cancel, for a while."""
        with anyio.move_on_after(HOOK_GRACE, shield=True):
            await self._call("after_run", ctx, outcome)


def signature_tree(sig: Signature) -> Iterator[Signature]:
    """A Signature and the callbacks nested in it, depth first."""
    yield sig
    for cb in (*sig.on_success, *sig.on_error):
        yield from signature_tree(cb)
