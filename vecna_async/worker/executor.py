"""Runs one claimed message: decode, check arguments, call the task, decide the outcome.

The outcome goes to the Flusher, never straight to Redis: success (final state + follow-up
messages: ``on_success`` callbacks with the results prepended, the next chain link with them
appended), a retry (Fibonacci back-off or ``RetryTaskLater``), a failure (final state +
``on_error`` callbacks with the error string first, then the worker's error handler), or a dead
letter when the message itself is unusable. Nothing a task does can stop the worker.

Middleware (``vecna_async.middleware``): with any registered, ``before_run`` is called before the
task function, ``on_retry`` when a run ends in a retry and ``after_run`` after every run that
``before_run`` saw, with its ``Outcome``; all in the run's own asyncio task. With none, nothing
extra is built or awaited.

Logging (logger ``vecna_async.worker``; every record carries ``task_id``, ``task_name``, ``queue``
and ``worker``, see ``vecna_async.logs``): one line per state change -- received and succeeded
(with its run time) at INFO, a retry at INFO, started, canceled and handed back at DEBUG -- a
failure as one WARNING line with its traceback at DEBUG, dead letters at ERROR. So ``--log-level
INFO`` shows the traffic, DEBUG every step, and WARNING only what needs a look.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from vecna_async.broker.base import Claimed, Done
from vecna_async.context import Context, ProgressReporter, discard_progress
from vecna_async.exceptions import (
    ArgumentTypeError,
    ResultEncodeError,
    ResultTooLarge,
    RetryTaskLater,
    TaskNotRegistered,
    TaskTimeout,
)
from vecna_async.keys import Keys
from vecna_async.logs import bind, unbind
from vecna_async.messages import FORMAT_VERSION, State, TaskMessage, TaskState, decode_task, encode
from vecna_async.middleware import Middlewares, Outcome
from vecna_async.signing import Signer, signed_body, task_problem
from vecna_async.tasks.args import coerce_typed_arg
from vecna_async.tasks.registry import TaskEntry, TaskRegistry
from vecna_async.tasks.signature import Signature
from vecna_async.tasks.wire import to_signature
from vecna_async.worker.flusher import Flusher
from vecna_async.worker.followups import FollowUps, final_state, padded_to

log = logging.getLogger("vecna_async.worker")
ErrorHandler = Callable[[Signature, BaseException], Any]
SUCCESS = Outcome("success", 0.0)
"""What a success returns when no middleware wants its details (nothing built per task)."""
TRACEBACK_LIMIT = 8192


def fibonacci_delay(attempt: int) -> int:
    """Seconds before retry number ``attempt`` (0-based): 1, 2, 3, 5, 8, ... (the seed's)."""
    a, b = 1, 2
    for _ in range(attempt):
        a, b = b, a + b
    return a


def undecodable_reason(body: bytes, exc: Exception) -> str:
    """Why a stored message cannot be read: a format version this worker does not know (sent by
    a newer vecna_async?) or plain garbage."""
    try:
        version = msgspec.json.decode(body).get("v", FORMAT_VERSION)
    except (msgspec.DecodeError, AttributeError):
        version = FORMAT_VERSION
    if version != FORMAT_VERSION:
        return (
            f"unknown message format version {version!r} (this worker reads version "
            f"{FORMAT_VERSION}; sent by a newer vecna_async?): {exc}"
        )
    return f"malformed message (cannot decode it: {exc})"


def error_string(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Executor:
    """Turns a claimed message into an outcome for the flusher."""

    def __init__(
        self,
        registry: TaskRegistry,
        flusher: Flusher,
        keys: Keys,
        max_message_bytes: int,
        *,
        max_result_bytes: int = 16 * 1024 * 1024,
        signer: Signer | None = None,
        middleware: Middlewares | None = None,
    ) -> None:
        self.succeeded = 0  # tasks finished with success / failure (the worker registry shows them)
        self.failed = 0
        self._registry = registry
        self._flusher = flusher
        self._follow = FollowUps(keys, max_message_bytes, signer)
        self._max_result_bytes = max_result_bytes
        self._signer = signer
        self._middleware = middleware if middleware is not None and middleware.wraps_runs else None
        self.error_handler: ErrorHandler | None = None
        self.canceled: Callable[[Claimed], bool] = lambda c: False
        """Whether the task was canceled before this delivery started (then it is not run)."""
        self.worker_name = ""
        self.state: dict[str, Any] = {}
        """The worker's resources (``on_worker_startup``), handed to tasks as ``ctx.state``."""
        self.progress: Callable[[TaskMessage], ProgressReporter] | None = None
        """Makes the reporter behind a task's ``ctx.report_progress``."""

    async def run(self, c: Claimed) -> None:
        """Run one message; whatever happens, its outcome reaches the flusher."""
        if self.canceled(c):
            log.debug("task %s in %r was canceled before it started", c.id, c.queue,
                      extra={"task_id": c.id, "queue": c.queue})  # fmt: skip
            self._flusher.release(c)  # the settle takes it as canceled
            return
        token = bind(task_id=c.id, queue=c.queue)  # each run is a task of its own: its context
        try:
            msg = self._usable(c)
            if msg is None:
                return
            log.info("task %s (%s) received", msg.name, msg.id)
            if self._middleware is None:  # no Context or Outcome is built for nobody
                await self._attempt(c, msg, None)
            else:
                await self._hooked(c, msg, self._middleware)
        except Exception:  # a bug here must not strand the message under a renewed lease
            log.exception("internal error running message %s; handing it back", c.id)
            self._flusher.release(c)
        finally:
            unbind(token)

    def _usable(self, c: Claimed) -> TaskMessage | None:
        """The claimed message, decoded; None (dead-lettered, with the reason) if it cannot be
        read or its signature is wrong."""
        try:
            msg = decode_task(c.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = undecodable_reason(c.body, exc)
            log.error("task %s in queue %r dead-lettered: %s", c.id, c.queue, reason)
            self.failed += 1
            self._flusher.dead(c, reason, final_state(c.id, "", State.FAILURE, error=reason))
            return None
        bind(task_name=msg.name)  # undone with the task_id that run() bound
        if self._signer is not None and (problem := task_problem(self._signer, msg, c.body)):
            reason = f"InvalidSignature: {problem}"
            log.error("task %s (%s) in queue %r dead-lettered: %s", msg.name, c.id, c.queue, reason)
            self.failed += 1
            state = final_state(c.id, msg.name, State.FAILURE, error=reason)
            self._flusher.dead(c, reason, state, msg.reply_to)  # nothing it carries runs
            return None
        return msg

    async def _hooked(self, c: Claimed, msg: TaskMessage, mw: Middlewares) -> None:
        """``_attempt`` with the middlewares' run hooks around it."""
        ctx = self._context(msg)
        outcome = await self._attempt(c, msg, ctx)
        if outcome.status == "retry":
            assert outcome.error is not None
            await mw.on_retry(ctx, outcome.error, outcome.retry_in or 0.0)
        await mw.after_run(ctx, outcome)

    async def _attempt(self, c: Claimed, msg: TaskMessage, ctx: Context | None) -> Outcome:
        """Run the task once and hand the outcome to the flusher; with a ``ctx`` (there are
        middlewares) call ``before_run`` first and return the Outcome for the after hooks."""
        # The claim hands out only tasks this worker knows, or ones that asked to fail when
        # no worker knows them (flagged unregistered).
        entry = None if c.unregistered else self._registry.find(msg.name)
        began = time.perf_counter()
        try:
            if ctx is not None and self._middleware is not None:
                await self._middleware.before_run(ctx)
                began = time.perf_counter()
            if entry is None:
                raise TaskNotRegistered(msg.name, self._registry.names)
            self._flusher.started(c, msg.name)
            log.debug("task %s (%s) started, attempt %d", msg.name, msg.id, msg.tries + 1)
            value = await self._call(entry, msg, ctx)
            state, results = self._success_state(msg, value)
        except RetryTaskLater as exc:
            return self._retry(c, msg, exc, int(exc.delay * 1000), began, counts=False)
        except anyio.get_cancelled_exc_class():
            await self._stopped(c, msg, ctx, time.perf_counter() - began)
            raise
        except Exception as exc:
            if _retryable(exc) and msg.attempts < msg.retry_count:
                delay = msg.retry_timeout or fibonacci_delay(msg.attempts)
                return self._retry(c, msg, exc, delay * 1000, began, counts=True)
            return await self._fail(c, msg, exc, time.perf_counter() - began)
        took = time.perf_counter() - began
        log.info("task %s (%s) succeeded in %.3fs", msg.name, msg.id, took)
        self.succeeded += 1
        done = Done(c.id, c.token, state, self._follow.on_success(msg, results))
        done.chord = self._follow.chord_success(msg, results)
        self._flusher.done(c, done, msg.reply_to)
        return SUCCESS if ctx is None else Outcome("success", took, value=value)

    async def _stopped(
        self, c: Claimed, msg: TaskMessage, ctx: Context | None, took: float
    ) -> None:
        """The run was cancelled: the worker is stopping, this delivery's lease was lost, or the
        task was canceled. Hand the message back (fenced by its token, so a lost delivery
        changes nothing; the settle takes a canceled task as CANCELED), not a failure."""
        canceled = self.canceled(c)
        if canceled:
            log.debug("task %s (%s) canceled while running", msg.name, msg.id)
        else:
            log.debug("task %s (%s) interrupted; its message goes back", msg.name, msg.id)
        self._flusher.release(c)
        if ctx is not None and self._middleware is not None:
            stopped = Outcome("canceled" if canceled else "interrupted", took)
            await self._middleware.after_stopped_run(ctx, stopped)

    def _success_state(self, msg: TaskMessage, value: Any) -> tuple[bytes, list[Any]]:
        """The SUCCESS state of a returned value and its results; raises if it cannot be kept."""
        results = list(value) if isinstance(value, tuple) else [value]
        try:
            state = encode(
                TaskState(task_id=msg.id, state=State.SUCCESS, task_name=msg.name, results=results)
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise ResultEncodeError(
                f"task {msg.name!r} returned {type(value).__name__}, which JSON cannot carry: {exc}"
            ) from exc
        if len(state) > self._max_result_bytes:
            raise ResultTooLarge(msg.name, len(state), self._max_result_bytes)
        return state, results

    def dead_lettered(self, dead: list[Claimed]) -> None:
        """Messages a claim dead-lettered (their leases kept expiring): settle what follows from
        the failure — ``on_error`` callbacks, a stopped chain, a failed chord — once."""
        for c in dead:
            try:
                msg = decode_task(c.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                msg = TaskMessage(id=c.id, name="", queue=c.queue)
            fields = {"task_id": c.id, "task_name": msg.name, "queue": c.queue}
            log.error("task %s (%s) dead-lettered: %s", msg.name, c.id, c.dead_reason, extra=fields)
            if self._signer is not None and (problem := task_problem(self._signer, msg, c.body)):
                # Its callbacks would go out signed by us: only its own FAILURE is settled.
                err = f"dead-lettered: {c.dead_reason}; InvalidSignature: {problem}"
                log.error(
                    "task %s (%s): InvalidSignature: %s", msg.name, c.id, problem, extra=fields
                )
                state = final_state(c.id, msg.name, State.FAILURE, error=err)
                self._flusher.aftermath(c, Done(c.id, c.token, state, []), msg.reply_to)
                continue
            done = self._follow.failure(c, msg, f"dead-lettered: {c.dead_reason}", "")
            self._flusher.aftermath(c, done, msg.reply_to)

    async def _call(self, entry: TaskEntry, msg: TaskMessage, ctx: Context | None) -> Any:
        args = msg.args
        if msg.arg_types:
            args = [
                coerce_typed_arg(msg.name, i, t, v) if t else v
                for i, (t, v) in enumerate(
                    zip(padded_to(msg.arg_types, len(args)), args, strict=True)
                )
            ]
        args, kwargs = entry.arg_spec.convert(msg.name, args, msg.kwargs)
        if entry.context is not None:
            args, kwargs = list(args), dict(kwargs)
            entry.context.inject(ctx or self._context(msg), args, kwargs)
        if not msg.timeout:
            return await self._invoke(entry, args, kwargs)
        with anyio.move_on_after(msg.timeout):
            return await self._invoke(entry, args, kwargs)
        raise TaskTimeout(msg.name, msg.timeout)  # the scope above was cancelled: time is up

    @staticmethod
    async def _invoke(entry: TaskEntry, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if entry.is_async:
            return await entry.fn(*args, **kwargs)
        # A thread cannot be interrupted: a cancel, a timeout or a stopping worker abandons it,
        # freeing the slot at once while the function runs on to its end in the background.
        call = functools.partial(entry.fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    def _context(self, msg: TaskMessage) -> Context:
        return Context(
            task_id=msg.id,
            name=msg.name,
            attempt=msg.tries + 1,
            queue=msg.queue,
            headers=msg.headers,
            eta=datetime.fromtimestamp(msg.eta_ms / 1000, UTC) if msg.eta_ms else None,
            worker=self.worker_name,
            state=self.state,
            _progress=self.progress(msg) if self.progress is not None else discard_progress,
        )

    def _retry(
        self,
        c: Claimed,
        msg: TaskMessage,
        exc: BaseException,
        delay_ms: int,
        began: float,
        *,
        counts: bool,
    ) -> Outcome:
        attempts = msg.attempts + 1 if counts else msg.attempts
        again = msgspec.structs.replace(
            msg, attempts=attempts, tries=msg.tries + 1, chord_args=-1, sig=""
        )
        body = encode(again) if self._signer is None else signed_body(again, self._signer)
        state = final_state(msg.id, msg.name, State.RETRY, error=error_string(exc))
        log.info("task %s (%s) retrying in %.3fs: %s", msg.name, msg.id, delay_ms / 1000, exc)
        self._flusher.retry(c, state, body, delay_ms)
        took = time.perf_counter() - began
        return Outcome("retry", took, error=exc, retry_in=delay_ms / 1000)

    async def _fail(self, c: Claimed, msg: TaskMessage, exc: BaseException, took: float) -> Outcome:
        err = error_string(exc)
        tb = "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]
        log.warning("task %s (%s) failed in %.3fs: %s", msg.name, msg.id, took, err)
        log.debug("task %s (%s) failed with this traceback:", msg.name, msg.id, exc_info=exc)
        self.failed += 1
        self._flusher.done(c, self._follow.failure(c, msg, err, tb), msg.reply_to)
        await self._call_error_handler(msg, exc)
        return Outcome("timeout" if isinstance(exc, TaskTimeout) else "failure", took, error=exc)

    async def _call_error_handler(self, msg: TaskMessage, exc: BaseException) -> None:
        if self.error_handler is None:
            return
        try:
            ret = self.error_handler(to_signature(msg), exc)
            if inspect.isawaitable(ret):
                await ret
        except Exception:
            log.exception("the worker's error handler raised for task %s (%s)", msg.name, msg.id)


def _retryable(exc: BaseException) -> bool:
    """Retrying cannot fix a bad argument, an unknown task or an unencodable or oversized
    result."""
    return not isinstance(
        exc, ArgumentTypeError | TaskNotRegistered | ResultEncodeError | ResultTooLarge
    )
