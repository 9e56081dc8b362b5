"""``ctx.report_progress``: a running task's progress, stored and pushed by the result backend."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vecna_async.backend.base import Backend
from vecna_async.context import ProgressReporter
from vecna_async.messages import TaskMessage, encode


def progress_reporter(backend: Backend) -> Callable[[TaskMessage], ProgressReporter]:
    """Makes, per message, the reporter its Context calls."""

    def for_message(msg: TaskMessage) -> ProgressReporter:
        async def report(value: Any) -> None:
            await backend.report_progress(msg.queue, msg.id, encode(value), msg.reply_to)

        return report

    return for_message
