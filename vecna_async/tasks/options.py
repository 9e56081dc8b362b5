"""Task options: the ``Signature`` fields a task fixes for every send (``@server.task(...)``).

>>> check_options("flaky", {"retry_count": 3})
{'retry_count': 3}
>>> sig = Signature("flaky", retry_timeout=10)
>>> apply_options(sig, {"retry_count": 3, "retry_timeout": 5})
>>> sig.retry_count, sig.retry_timeout
(3, 10)

The options are Signature's own fields minus those that describe one call (``PER_CALL``: the
arguments, the ETA, the ids, the callbacks, the workflow bookkeeping), so a field added to
Signature is an option at once. The sending Server applies a task's options to each Signature
of that task it sends, by handle or by name, wherever it sits in a workflow; a field the
Signature sets wins. A field still equal to its default counts as not set: there is no telling
``Signature("t", priority=0)`` from ``Signature("t")``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, get_type_hints

import msgspec

from vecna_async.tasks.signature import Signature

PER_CALL = frozenset(
    {
        "name", "args", "kwargs", "eta", "id", "code",
        # callbacks are Signatures with ids of their own: one shared by every send would run
        # once (an id is an idempotency key); pass them on the Signature of each call
        "on_success", "on_error",
        "group_id", "group_task_count", "chord_callback", "spec",
    }
)  # fmt: skip
"""Signature fields that describe one call, never a task option."""

_FIELDS = {f.name: f for f in dataclasses.fields(Signature) if f.name != "_"}
TASK_OPTIONS = frozenset(_FIELDS) - PER_CALL
"""Every valid task option: derived from Signature's fields, so a new field is one at once."""


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


_DEFAULTS = {name: _default(f) for name, f in _FIELDS.items() if name in TASK_OPTIONS}


def check_options(task_name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options, checked: an unknown one, or a value of the wrong type for its Signature field,
    is a TypeError naming it; a value the Signature refuses (``retry_count=-1``) its ValueError."""
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise TypeError(
            f"task {task_name!r}: unknown option{'s' if len(unknown) > 1 else ''} {names}; "
            f"the options are: {', '.join(sorted(TASK_OPTIONS))}"
        )
    hints = get_type_hints(Signature)
    for key, value in options.items():
        try:
            msgspec.convert(value, hints[key], strict=True)
        except msgspec.ValidationError as exc:
            raise TypeError(f"task {task_name!r}: option {key}={value!r}: {exc}") from None
        except TypeError:  # a field type msgspec cannot check: the Signature's own checks decide
            pass
    Signature(task_name, **options)  # its own checks (a negative retry_count ...)
    return dict(options)


def apply_options(sig: Signature, options: Mapping[str, Any]) -> None:
    """Set each option on ``sig`` where the field is still at its default."""
    for key, value in options.items():
        if getattr(sig, key) == _DEFAULTS[key]:
            setattr(sig, key, copy.deepcopy(value) if isinstance(value, dict | list) else value)
