"""Every error vecna_async raises, in one tree.

::

    VecnaError                      base of everything below
    ├── ConfigError (ValueError)    a bad Config field, URL or YAML/env value; names the field
    ├── InvalidCronSpec (ValueError)  a periodic spec that does not parse; names the spec
    ├── NotConnected (RuntimeError)   the Server was closed and is used again
    ├── BrokerError                 the broker could not do what was asked
    │   ├── BrokerUnavailable (ConnectionError)  Redis cannot be reached / timed out
    │   ├── BrokerRefused                        Redis answered with an error reply (OOM,
    │   │                                        READONLY, BUSY, CLUSTERDOWN ...); names it
    │   ├── UnsupportedRedis                     the Redis server is older than vecna needs
    │   ├── MessageTooLarge (ValueError)         an encoded message over the configured limit
    │   ├── MalformedMessage                     a stored message that cannot be decoded
    │   └── InvalidSignature                     a message unsigned or signed with no known key
    ├── TaskError                   something wrong with a task or its call
    │   ├── TaskNotRegistered (KeyError)         no function under that name
    │   ├── DuplicateTask (ValueError)           a name registered twice with different functions
    │   ├── ArgumentTypeError (TypeError)        an argument does not match its declared type
    │   ├── ResultEncodeError (TypeError)        a task returned a value JSON cannot carry
    │   ├── ResultTooLarge (ValueError)          a task's encoded result is over the limit
    │   ├── TaskTimeout (TimeoutError)           a task ran past its ``timeout`` and was stopped
    │   └── WorkerStartupFailed                  an ``on_worker_startup`` hook raised
    └── ResultError                 waiting for or reading a result failed
        ├── TaskFailed                           the task ended in FAILURE; carries its error string
        ├── TaskCanceled                         the task was canceled before it ran
        └── ResultTimeout (TimeoutError)         `AsyncResult.get(timeout)` ran out of time

``RetryTaskLater`` is not an error: a task raises it to ask for another attempt after ``delay``.
"""

from __future__ import annotations

from datetime import timedelta


class VecnaError(Exception):
    """Base class of every vecna_async error."""


class ConfigError(VecnaError, ValueError):
    """A configuration value is invalid. The message names the field and the value."""


class InvalidCronSpec(VecnaError, ValueError):
    """A periodic spec does not parse.

    >>> raise InvalidCronSpec("* * *", "expected 5 or 6 fields")
    Traceback (most recent call last):
    vecna_async.exceptions.InvalidCronSpec: invalid cron spec '* * *': expected 5 or 6 fields
    """

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"invalid cron spec {spec!r}: {reason}")
        self.spec = spec
        self.reason = reason


class NotConnected(VecnaError, RuntimeError):
    """The Server was closed; open it again with ``async with server`` or ``server.connect()``."""


class BrokerError(VecnaError):
    """The broker could not do what was asked."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """Redis could not be reached (refused, timed out, or the connection dropped)."""


class BrokerRefused(BrokerError):
    """Redis answered a command with an error reply instead of doing it.

    ``reply`` is Redis's own text (``"OOM command not allowed when used memory > 'maxmemory'"``);
    ``transient`` is True for replies that go away by themselves (out of memory, a read-only
    replica after a failover, a busy script, a loading or migrating server, a cluster that is
    down): workers, flushers and schedulers back off and retry those and keep what they hold.
    """

    TRANSIENT_PREFIXES = (
        "OOM",
        "READONLY",
        "BUSY",
        "LOADING",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "NOREPLICAS",
        "NOTREADY",
        "MOVED",
        "ASK",
        "UNBLOCKED",
    )

    def __init__(self, where: str, reply: str, doing: str = "") -> None:
        what = f" {doing}" if doing else ""
        super().__init__(f"Redis at {where} refused{what}: {reply}")
        self.where = where
        self.reply = reply
        self.transient = reply.split(" ", 1)[0].upper() in self.TRANSIENT_PREFIXES


class UnsupportedRedis(BrokerError):
    """The Redis server is too old (vecna_async needs Redis 7.0 or newer)."""


class MessageTooLarge(BrokerError, ValueError):
    """An encoded task message is larger than ``RedisConfig.max_message_bytes``."""

    def __init__(self, task_name: str, size: int, limit: int) -> None:
        super().__init__(
            f"task {task_name!r}: encoded message is {size} bytes, over the limit of {limit} bytes "
            "(RedisConfig.max_message_bytes); pass a reference (a key, a URL) instead of the data"
        )
        self.task_name = task_name
        self.size = size
        self.limit = limit


class MalformedMessage(BrokerError):
    """A stored message could not be decoded; it was moved to the dead-letter list."""


class InvalidSignature(BrokerError):
    """A message is unsigned, or signed with none of ``Config.signing_keys``: it never runs and
    goes to the dead letters with this reason."""


class TaskError(VecnaError):
    """Something is wrong with a task or with how it was called."""


class TaskNotRegistered(TaskError, KeyError):
    """No task function is registered under this name."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        hint = f"; registered: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"task {name!r} is not registered{hint}")
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the whole message again
        return str(self.args[0])


class DuplicateTask(TaskError, ValueError):
    """A task name is already registered to a different function."""


class ArgumentTypeError(TaskError, TypeError):
    """An argument does not match its declared type (a seed ``Arg`` type or an annotation)."""

    def __init__(self, task_name: str, index: int | str, expected: str, detail: str) -> None:
        where = f"argument {index}" if isinstance(index, int) else f"keyword argument {index!r}"
        super().__init__(f"task {task_name!r}, {where}: expected {expected}, {detail}")
        self.task_name = task_name
        self.index = index
        self.expected = expected


class ResultEncodeError(TaskError, TypeError):
    """A task returned a value that cannot be encoded as JSON by msgspec."""


class ResultTooLarge(TaskError, ValueError):
    """A task returned a value whose encoded result is over ``RedisConfig.max_result_bytes``."""

    def __init__(self, task_name: str, size: int, limit: int) -> None:
        super().__init__(
            f"task {task_name!r} returned a result of {size} bytes encoded, over the limit of "
            f"{limit} bytes (RedisConfig.max_result_bytes); store large data elsewhere and "
            "return a reference"
        )
        self.task_name = task_name
        self.size = size
        self.limit = limit


class TaskTimeout(TaskError, TimeoutError):
    """A task ran longer than its ``timeout`` (seconds) and was stopped: an ``async def`` task is
    cancelled, a plain ``def`` task running in a thread is abandoned (its slot freed, its result
    dropped). It counts as a failure, retried while the task has retries left."""

    def __init__(self, task_name: str, timeout: float) -> None:
        super().__init__(f"task {task_name!r} ran past its timeout of {timeout:g}s and was stopped")
        self.task_name = task_name
        self.timeout = timeout


class WorkerStartupFailed(TaskError):
    """An ``on_worker_startup`` hook raised: the worker stops before it claims anything."""


class ResultError(VecnaError):
    """Waiting for or reading a task result failed."""


class TaskFailed(ResultError):
    """The task ended in FAILURE. ``error`` is the task's error string (``"ValueError: bad"``)."""

    def __init__(self, task_id: str, task_name: str, error: str, traceback: str = "") -> None:
        super().__init__(f"task {task_name!r} ({task_id}) failed: {error}")
        self.task_id = task_id
        self.task_name = task_name
        self.error = error
        self.traceback = traceback


class TaskCanceled(ResultError):
    """The task was canceled before it ran."""

    def __init__(self, task_id: str, task_name: str = "") -> None:
        super().__init__(f"task {task_name!r} ({task_id}) was canceled")
        self.task_id = task_id
        self.task_name = task_name


class ResultTimeout(ResultError, TimeoutError):
    """``AsyncResult.get(timeout)`` ran out of time; the task may still finish later."""

    def __init__(self, task_id: str, timeout: float, state: str | None) -> None:
        seen = state or "no state stored"
        super().__init__(f"no result for task {task_id} within {timeout:g}s (last state: {seen})")
        self.task_id = task_id
        self.timeout = timeout
        self.state = state


class RetryTaskLater(Exception):
    """Raise from a task to run it again after ``delay`` (seconds or a timedelta).

    It does not count against ``retry_count``: the task asked for it.

    >>> raise RetryTaskLater("rate limited", delay=30)
    Traceback (most recent call last):
    vecna_async.exceptions.RetryTaskLater: rate limited (retry in 30s)
    """

    def __init__(self, message: str = "", delay: float | timedelta = 0.0) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ValueError(f"RetryTaskLater delay must be >= 0, got {seconds}")
        super().__init__(f"{message} (retry in {seconds:g}s)")
        self.message = message
        self.delay = seconds
