"""Argument checks made before a task runs.

Two kinds: the seed's typed ``Arg("int64", 1)`` values, checked against the type string (ranges,
bool-vs-int, string-vs-number, slice elements); and plain values, converted with msgspec against
the task function's annotations when it has them (``async def add(a: int, b: int)``).
Both raise ``ArgumentTypeError`` naming the task, the argument and the expected type.

A Server sending a task whose function it knows checks the plain values first
(``ArgSpec.check_outgoing``): a value of the wrong kind for its annotation, which JSON would
otherwise blur (``bytes`` arrive as a base64 ``str``, a ``UUID`` or a ``datetime`` as a ``str``),
or one msgspec cannot encode at all, is an ``ArgumentTypeError`` at send.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, get_type_hints

import msgspec
import msgspec.inspect

from vecna_async.exceptions import ArgumentTypeError

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int": (-(2**63), 2**63 - 1),
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint": (0, 2**64 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
SCALAR_TYPES = frozenset({*_INT_RANGES, "bool", "float32", "float64", "string"})
ARG_TYPES = frozenset(SCALAR_TYPES | {f"[]{t}" for t in SCALAR_TYPES})


def check_type_name(type_name: str) -> None:
    """Reject an ``Arg`` type string that is not in the seed's list."""
    if type_name not in ARG_TYPES:
        raise ValueError(
            f"unknown Arg type {type_name!r}; expected one of: {', '.join(sorted(ARG_TYPES))}"
        )


def _scalar_problem(type_name: str, value: Any) -> tuple[str, Any] | None:
    """None if ``value`` fits ``type_name``, else (what was wrong, the value to report)."""
    if type_name == "bool":
        return None if isinstance(value, bool) else (f"got {type(value).__name__}", value)
    if type_name == "string":
        return None if isinstance(value, str) else (f"got {type(value).__name__}", value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"got {type(value).__name__}", value
    if type_name in _INT_RANGES:
        if isinstance(value, float):
            return "got float", value
        low, high = _INT_RANGES[type_name]
        if not low <= value <= high:
            return f"{value} is out of range [{low}, {high}]", value
        return None
    try:
        as_float = float(value)  # JSON integers of any size arrive here
    except OverflowError:
        return f"{value} is out of range for {type_name}", value
    if type_name == "float32" and math.isfinite(as_float) and abs(as_float) > _FLOAT32_MAX:
        return f"{value} overflows float32", value
    return None


def coerce_typed_arg(task_name: str, index: int, type_name: str, value: Any) -> Any:
    """Check one seed-typed value; floats given as JSON integers come back as float."""
    if type_name.startswith("[]"):
        if not isinstance(value, list):
            raise ArgumentTypeError(task_name, index, type_name, f"got {type(value).__name__}")
        elem = type_name[2:]
        return [
            _coerce_scalar(task_name, index, elem, v, f" at element {i}")
            for i, v in enumerate(value)
        ]
    return _coerce_scalar(task_name, index, type_name, value, "")


def _coerce_scalar(task_name: str, index: int, type_name: str, value: Any, where: str) -> Any:
    problem = _scalar_problem(type_name, value)
    if problem is not None:
        raise ArgumentTypeError(task_name, index, type_name, problem[0] + where)
    if type_name.startswith("float") and isinstance(value, int):
        return float(value)
    return value


class ArgSpec:
    """The annotated parameter types of one task function, built once at registration.

    ``convert(name, args, kwargs)`` checks and converts plain JSON values with msgspec (strict: no
    "1" for an int, no true for an int); unannotated parameters accept anything.
    """

    __slots__ = ("_keywords", "_positional", "_varargs", "_varkw", "trivial")

    def __init__(self, fn: Callable[..., Any], skip: str | None = None) -> None:
        """``skip``: a parameter the worker fills in itself (the task's Context)."""
        try:
            hints = get_type_hints(fn)
        except Exception:  # unresolvable annotations: check nothing rather than refuse the task
            hints = {}
        self._positional: list[Any] = []
        self._varargs: Any = Any
        self._keywords: dict[str, Any] = {}
        self._varkw: Any = Any
        for param in inspect.signature(fn).parameters.values():
            if param.name == skip:
                continue
            hint = _checkable(hints.get(param.name, Any))
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                self._positional.append(hint)
                self._keywords[param.name] = hint
            elif param.kind is param.VAR_POSITIONAL:
                self._varargs = hint
            elif param.kind is param.KEYWORD_ONLY:
                self._keywords[param.name] = hint
            else:
                self._varkw = hint
        self.trivial = all(
            h is Any
            for h in (*self._positional, self._varargs, *self._keywords.values(), self._varkw)
        )

    def convert(
        self, task_name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        if self.trivial:
            return args, kwargs
        n = len(self._positional)
        out_args = [
            _convert(task_name, i, self._positional[i] if i < n else self._varargs, v)
            for i, v in enumerate(args)
        ]
        out_kwargs = {
            k: _convert(task_name, k, self._keywords.get(k, self._varkw), v)
            for k, v in kwargs.items()
        }
        return out_args, out_kwargs

    def check_outgoing(
        self, task_name: str, args: Iterable[tuple[int, Any]], kwargs: dict[str, Any]
    ) -> None:
        """At send: each value (positional ones with their index) must be of a kind its
        annotation takes and still be one once sent as JSON (a ``Decimal`` travels as a string,
        which a ``float`` parameter refuses). Raises ArgumentTypeError naming the argument."""
        if self.trivial:
            return
        n = len(self._positional)
        for i, v in args:
            _check_outgoing(task_name, i, self._positional[i] if i < n else self._varargs, v)
        for k, v in kwargs.items():
            _check_outgoing(task_name, k, self._keywords.get(k, self._varkw), v)


def _checkable(hint: Any) -> Any:
    """The hint if msgspec can build values of it from JSON, else Any (a plain class, say, gets
    the JSON value as it came: checking it could only ever fail)."""
    if hint is Any:
        return hint
    try:
        info = msgspec.inspect.type_info(hint)
    except (TypeError, ValueError):
        return Any
    return Any if isinstance(info, msgspec.inspect.CustomType) else hint


_EXACT = frozenset({int, float, str, bool})


def _convert(task_name: str, index: int | str, hint: Any, value: Any) -> Any:
    if hint is Any or (hint in _EXACT and type(value) is hint):  # already right: skip msgspec
        return value
    try:
        return msgspec.convert(value, hint, strict=True)
    except msgspec.ValidationError as exc:
        raise ArgumentTypeError(task_name, index, _type_label(hint), _detail(exc)) from None


def _check_outgoing(task_name: str, index: int | str, hint: Any, value: Any) -> None:
    if hint is Any or (hint in _EXACT and type(value) is hint):
        return  # (an unencodable value is named when the message is encoded: tasks.wire)
    _convert(task_name, index, hint, value)  # the kind: no bytes for a str
    try:
        wire = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise unencodable(task_name, index, value, exc) from None
    try:
        msgspec.convert(wire, hint, strict=True)  # what the worker will convert
    except msgspec.ValidationError:
        detail = f"got {type(value).__name__}, which arrives as a JSON {type(wire).__name__}"
        raise ArgumentTypeError(task_name, index, _type_label(hint), detail) from None


def unencodable(task_name: str, index: int | str, value: Any, exc: Exception) -> ArgumentTypeError:
    """The error for an argument msgspec cannot encode (raised at send)."""
    detail = f"got {type(value).__name__} ({exc})"
    return ArgumentTypeError(task_name, index, "a value msgspec can encode", detail)


_MSGSPEC_MISMATCH = re.compile(r"^Expected `(?P<want>.+?)`, got `(?P<got>.+?)`$")
_MSGSPEC_PATH = re.compile(r"^(?P<what>.*) - at `(?P<path>\$[^`]*)`$")


def _detail(exc: msgspec.ValidationError) -> str:
    """msgspec's message in the words of ``ArgumentTypeError`` ("expected str, got int"): the
    expected type is already said, so "Expected `str`, got `int`" becomes "got int"."""
    message, path = str(exc), ""
    if located := _MSGSPEC_PATH.match(message):
        message, path = located["what"], located["path"]
    if mismatch := _MSGSPEC_MISMATCH.match(message):
        got = mismatch["got"]
        return f"got {got} at {path} (expected {mismatch['want']} there)" if path else f"got {got}"
    message = message[:1].lower() + message[1:]
    return f"{message} at {path}" if path else message


def _type_label(hint: Any) -> str:
    if isinstance(hint, type) and not getattr(hint, "__args__", None):
        return hint.__name__
    return str(hint).replace("typing.", "")
