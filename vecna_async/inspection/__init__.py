"""The operator's side: ``server.inspect()`` (``Inspector``), the types it returns, the text
tables of ``vecna-async inspect`` and the read-only web dashboard (``vecna-async dashboard``).

Imported only when used: a worker never loads it.
"""

from vecna_async.inspection.inspector import Inspector
from vecna_async.inspection.types import (
    DeadLetterInfo,
    DelayedTask,
    PeriodicInfo,
    QueueInfo,
    RunningTask,
    Snapshot,
    TaskInfo,
    WorkerInfo,
    to_json,
)

__all__ = [
    "DeadLetterInfo",
    "DelayedTask",
    "Inspector",
    "PeriodicInfo",
    "QueueInfo",
    "RunningTask",
    "Snapshot",
    "TaskInfo",
    "WorkerInfo",
    "to_json",
]
