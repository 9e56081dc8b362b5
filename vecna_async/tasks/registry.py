"""The task registry and typed task handles.

>>> registry = TaskRegistry()
>>> async def add(*args: int) -> int:
...     return sum(args)
>>> registry.register("add", add).name
'add'
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    get_type_hints,
    overload,
)

from vecna_async.context import Context
from vecna_async.exceptions import DuplicateTask, TaskNotRegistered
from vecna_async.keys import check_name
from vecna_async.tasks.args import ArgSpec
from vecna_async.tasks.options import apply_options, check_options
from vecna_async.tasks.signature import Arg, Signature

if TYPE_CHECKING:
    from vecna_async.backend.results import AsyncResult

P = ParamSpec("P")
R = TypeVar("R")
TaskFunction = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class ContextSlot:
    """Where a task function takes its ``Context``: a positional index, or a keyword-only name."""

    name: str
    index: int | None

    def inject(self, ctx: Context, args: list[Any], kwargs: dict[str, Any]) -> None:
        if self.index is not None and self.index <= len(args):
            args.insert(self.index, ctx)
        else:
            kwargs[self.name] = ctx


def context_slot(fn: Callable[..., Any]) -> ContextSlot | None:
    """The parameter of ``fn`` annotated ``Context``, if any."""
    try:
        hints = get_type_hints(fn)
    except Exception:
        return None
    positional = 0
    for param in inspect.signature(fn).parameters.values():
        takes_position = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        if hints.get(param.name) is Context:
            return ContextSlot(param.name, positional if takes_position else None)
        positional += takes_position
    return None


@dataclass(frozen=True, slots=True)
class TaskEntry:
    """A registered task: the function, whether to await it, its argument spec (its Context
    parameter left out), where it takes a Context if it does, and its options (Signature fields
    applied to every send of it by this Server: ``tasks.options``)."""

    name: str
    fn: TaskFunction
    is_async: bool
    arg_spec: ArgSpec
    context: ContextSlot | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class TaskRegistry:
    """Task functions by name. Sync functions are allowed; the worker runs them in a thread."""

    def __init__(self) -> None:
        self._entries: dict[str, TaskEntry] = {}

    def register(
        self, name: str, fn: TaskFunction, options: Mapping[str, Any] | None = None
    ) -> TaskEntry:
        """Register ``fn`` under ``name`` with its task ``options`` (an unknown option is a
        TypeError naming it). Registering the same function again is a no-op."""
        check_name("task name", name)
        if not callable(fn):
            raise TypeError(f"task {name!r}: expected a function, got {type(fn).__name__}")
        checked = check_options(name, options or {})
        existing = self._entries.get(name)
        if existing is not None:
            if existing.fn is fn and existing.options == checked:
                return existing
            if existing.fn is fn:
                raise DuplicateTask(f"task {name!r} is already registered with other options")
            raise DuplicateTask(f"task {name!r} is already registered to {existing.fn!r}")
        slot = context_slot(fn)
        spec = ArgSpec(fn, skip=slot.name if slot else None)
        entry = TaskEntry(name, fn, inspect.iscoroutinefunction(fn), spec, slot, checked)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> TaskEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise TaskNotRegistered(name, list(self._entries)) from None

    def find(self, name: str) -> TaskEntry | None:
        return self._entries.get(name)

    def options_of(self, name: str) -> Mapping[str, Any]:
        """The options ``name`` was registered with (none for a task registered elsewhere)."""
        entry = self._entries.get(name)
        return entry.options if entry is not None else {}

    def check_arguments(
        self, name: str, args: list[Any], kwargs: dict[str, Any], *, positional: bool = True
    ) -> None:
        """At send: raise ArgumentTypeError for a plain argument of a kind its annotation does not
        take (``bytes`` for a ``str``) or msgspec cannot encode, when ``name`` is registered here.
        ``Arg`` values are the worker's to check (the seed's contract). ``positional=False``
        checks the keywords only: for a callback, values are put before its own args."""
        entry = self._entries.get(name)
        if entry is None or entry.arg_spec.trivial:
            return
        indexed = (
            [(i, a) for i, a in enumerate(args) if not isinstance(a, Arg)] if positional else []
        )
        entry.arg_spec.check_outgoing(name, indexed, kwargs)

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class TaskSender(Protocol):
    """What a TaskHandle needs from a Server (kept small so handles do not import the Server)."""

    async def send_task(self, signature: Signature) -> AsyncResult[Any]: ...


class TaskDecorator(Protocol):
    """What ``@server.task(name=..., **options)`` returns: it takes the task function (one
    whose Context parameter, if it has one, comes first) and gives its typed handle."""

    @overload
    def __call__(
        self, fn: Callable[Concatenate[Context, P], Awaitable[R]], /
    ) -> TaskHandle[P, R]: ...  # pragma: no cover

    @overload
    def __call__(
        self, fn: Callable[P, Awaitable[R]], /
    ) -> TaskHandle[P, R]: ...  # pragma: no cover


class TaskHandle(Generic[P, R]):
    """A registered task you can call directly or send, with the arguments type-checked by mypy.

    ``await handle.send(2, 3)`` sends it and returns ``AsyncResult[R]``; ``handle.signature(2, 3)``
    builds a Signature for workflows; ``await handle(2, 3)`` just calls the function here.
    """

    def __init__(self, sender: TaskSender, entry: TaskEntry) -> None:
        self.name = entry.name
        self.fn: Callable[..., Any] = entry.fn
        self._context = entry.context
        self._sender = sender
        self._options = entry.options
        self._return_type = _return_type(entry.fn)
        self.__doc__ = entry.fn.__doc__
        self.__wrapped__ = entry.fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R] | R:
        """Call the function here, not through a worker (a Context parameter gets a local
        Context: task id "local", attempt 1, an empty ``state``, progress reports dropped)."""
        if self._context is None:
            return cast("Awaitable[R] | R", self.fn(*args, **kwargs))
        call_args, call_kwargs = list(args), dict(kwargs)
        self._context.inject(Context(task_id="local", name=self.name), call_args, call_kwargs)
        return cast("Awaitable[R] | R", self.fn(*call_args, **call_kwargs))

    def signature(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """A Signature of this task with these arguments and the decorator's options (copies:
        a send hook that edits this Signature's headers leaves the next one's alone)."""
        sig = Signature(self.name, args=list(args), kwargs=dict(kwargs))
        apply_options(sig, self._options)
        return sig

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task; the result's ``get()`` converts the value to the return annotation."""
        result = await self._sender.send_task(self.signature(*args, **kwargs))
        return result.typed(self._return_type)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.name!r} -> {self.fn!r}>"


def _return_type(fn: Callable[..., Any]) -> Any:
    try:
        hint = get_type_hints(fn).get("return", Any)
    except Exception:
        return Any
    return hint
