"""Logging that fits into an application's: structured records, and the command line's setup.

Every record of vecna_async's loggers carries the attributes ``task_id``, ``task_name``,
``queue`` and ``worker`` (None where they do not apply), whatever handler or formatter the
application installed: a JSON formatter sees them as fields, a text format can name them
(``%(task_id)s``). They come from the context the record was logged in -- the worker sets
``worker`` for everything it runs, the executor the task's fields while it runs one -- so a log
line deep inside the flusher or the scheduler is attributed without every call site passing
them. A caller's own ``extra=`` wins.

The command line (``vecna-async worker``) configures logging only when the application has not
(the root logger has no handler) and never with ``--no-log-config``; ``--log-format json``
writes one JSON object a line (``JsonFormatter``, standard library only).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

FIELDS = ("task_id", "task_name", "queue", "worker")
LOGGERS = (
    "vecna_async",
    "vecna_async.broker",
    "vecna_async.cli",
    "vecna_async.failover",
    "vecna_async.middleware",
    "vecna_async.preflight",
    "vecna_async.producer",
    "vecna_async.results",
    "vecna_async.scheduler",
    "vecna_async.worker",
)
"""Every logger vecna_async logs to (a test checks the package uses no other)."""
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_fields: ContextVar[dict[str, Any] | None] = ContextVar("vecna_async_log_fields", default=None)


def bind(**fields: Any) -> Token[dict[str, Any] | None]:
    """Attach ``fields`` to the records logged from this context on; ``unbind`` the token to
    restore what was before."""
    return _fields.set({**(_fields.get() or {}), **fields})


def unbind(token: Token[dict[str, Any] | None]) -> None:
    _fields.reset(token)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """``bind`` for the duration of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


class ContextFields(logging.Filter):
    """Puts the context's fields on each record (None for those not bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _fields.get() or {}
        for name in FIELDS:
            if not hasattr(record, name):
                setattr(record, name, bound.get(name))
        return True


_FILTER = ContextFields()


def install() -> None:
    """Add the filter to vecna_async's loggers (a logger's filters apply to its own records only,
    hence one each). Idempotent; done when this module is imported."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, the
    fields above that are set, and ``exc_info`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def configure(level: str, fmt: str = "text") -> bool:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), unless the application
    configured logging already (the root logger has a handler): then leave its setup alone and
    return False."""
    root = logging.getLogger()
    if root.handlers:
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return True


install()
