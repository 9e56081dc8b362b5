"""The inspection results as tables: what ``vecna-async inspect`` prints and the dashboard shows.

Each ``*_table`` function turns a list from the Inspector into a ``Table`` (a title, column
headers and rows of strings); ``render_text`` lays tables out as aligned plain text, the
dashboard as HTML, so both show the same columns. Times are shown relative to Redis's clock
(``in 4s``, ``3m ago``) with the UTC time, so hosts with skewed clocks read the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from vecna_async.inspection.types import (
    DeadLetterInfo,
    DelayedTask,
    PeriodicInfo,
    QueueInfo,
    RunningTask,
    Snapshot,
    TaskInfo,
    WorkerInfo,
)

CELL_MAX = 60
"""Longest cell in a table (a dead-letter reason, a task list); ``--json`` has everything."""


@dataclass(frozen=True)
class Table:
    """A titled table of text cells; ``numeric`` columns are right-aligned."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)
    empty: str = "none"


def span(seconds: float) -> str:
    """A duration as a short string: ``0.4s``, ``42s``, ``3m12s``, ``5h04m``, ``2d03h``."""
    seconds = abs(seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def when(t: datetime | None, now: datetime) -> str:
    """``in 4.0s (10:20:04Z)`` or ``3m12s ago (10:17:00Z)``; the date too if not today."""
    if t is None:
        return "-"
    delta = (t - now).total_seconds()
    relative = f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"
    shown = t.strftime("%H:%M:%SZ") if t.date() == now.date() else t.strftime("%Y-%m-%d %H:%MZ")
    return f"{relative} ({shown})"


def ago(t: datetime, now: datetime) -> str:
    return f"{span(max(0.0, (now - t).total_seconds()))} ago"


def cut(text: str, most: int = CELL_MAX) -> str:
    """One line of at most ``most`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= most else line[: most - 1] + "…"


def queues_table(queues: Sequence[QueueInfo]) -> Table:
    headers = ["QUEUE", "READY", "DELAYED", "RUNNING", "DEAD", "PARKED", "HELD"]
    rows = [
        [q.name, *(str(n) for n in (q.ready, q.delayed, q.running, q.dead_letters, q.parked,
                                    q.held))]
        for q in queues
    ]  # fmt: skip
    return Table("Queues", headers, rows, numeric={1, 2, 3, 4, 5, 6}, empty="no known queues")


def workers_table(workers: Sequence[WorkerInfo], now: datetime) -> Table:
    headers = ["WORKER", "HOST", "PID", "QUEUES", "CONC", "RUNNING", "DONE", "FAILED", "UP",
               "LAST SEEN"]  # fmt: skip
    rows = [
        [w.name, w.host, str(w.pid), cut(",".join(w.queues), 30), str(w.concurrency or "∞"),
         str(w.running), str(w.done), str(w.failed), span((now - w.started).total_seconds()),
         ago(w.last_seen, now)]
        for w in workers
    ]  # fmt: skip
    title = f"Workers ({len(workers)} live)"
    return Table(title, headers, rows, numeric={2, 4, 5, 6, 7, 8}, empty="no live workers")


def periodic_table(entries: Sequence[PeriodicInfo], now: datetime) -> Table:
    headers = ["CODE", "KIND", "SPEC", "TZ", "TASKS", "NEXT FIRE", "LAST FIRE"]
    rows = []
    for p in entries:
        upcoming = (
            f"QUARANTINED: {cut(p.quarantined, 40)}" if p.quarantined else when(p.next_fire, now)
        )
        tasks = cut(", ".join(p.tasks), 30)
        rows.append([p.code, p.kind, p.spec, p.tz, tasks, upcoming, when(p.last_fire, now)])
    return Table("Periodic", headers, rows, empty="no periodic entries")


def running_table(tasks: Sequence[RunningTask], now: datetime) -> Table:
    headers = ["QUEUE", "ID", "TASK", "WORKER", "STARTED", "LEASE UNTIL"]
    rows = [
        [t.queue, t.id, t.name, t.worker or "?", ago(t.started, now) if t.started else "-",
         when(t.lease_deadline, now)]
        for t in tasks
    ]  # fmt: skip
    return Table("Running", headers, rows, empty="nothing running")


def delayed_table(tasks: Sequence[DelayedTask], now: datetime) -> Table:
    rows = [[t.queue, t.id, t.name, when(t.due, now)] for t in tasks]
    return Table("Delayed", ["QUEUE", "ID", "TASK", "DUE"], rows, empty="nothing delayed")


def dead_letters_table(letters: Sequence[DeadLetterInfo], now: datetime) -> Table:
    headers = ["QUEUE", "ID", "TASK", "WHEN", "DELIVERIES", "REASON"]
    rows = [
        [d.queue, d.id, d.name, ago(d.when, now), str(d.deliveries), cut(d.reason)] for d in letters
    ]
    return Table("Dead letters", headers, rows, numeric={4}, empty="no dead letters")


def snapshot_tables(s: Snapshot) -> list[Table]:
    """The one screen of ``vecna-async inspect``: queues, workers, periodic entries."""
    return [
        queues_table(s.queues),
        workers_table(s.workers, s.time),
        periodic_table(s.periodic, s.time),
    ]


def render_text(tables: Sequence[Table]) -> str:
    """Tables as aligned plain text, a blank line between them."""
    return "\n\n".join(_text_table(t) for t in tables) + "\n"


def _text_table(t: Table) -> str:
    if not t.rows:
        return f"{t.title}: {t.empty}"
    widths = [max(len(r[i]) for r in [t.headers, *t.rows]) for i in range(len(t.headers))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in t.numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([t.title, line(t.headers), *(line(r) for r in t.rows)])


def task_text(info: TaskInfo, now: datetime) -> str:
    """One task as ``field: value`` lines (``vecna-async task``)."""
    lines = [
        ("task", f"{info.name} ({info.id})"),
        ("queue", info.queue),
        ("state", info.state.value),
        ("where", info.place or "finished (its message is gone; its state is kept)"),
        ("args", _json(info.args) if info.args is not None else ""),
        ("kwargs", _json(info.kwargs) if info.kwargs else ""),
        ("result", _json(info.result) if info.state.value == "SUCCESS" else ""),
        ("error", info.error),
        (
            "attempt",
            f"{info.attempt} (retries allowed: {info.retry_count})" if info.attempt else "",
        ),
        ("deliveries", str(info.deliveries) if info.deliveries else ""),
        ("eta", when(info.eta, now) if info.eta else ""),
        ("worker", info.worker),
        ("started", ago(info.started, now) if info.started else ""),
        ("lease until", when(info.lease_deadline, now) if info.lease_deadline else ""),
        ("dead letter", _dead(info, now)),
        ("progress", _json(info.progress) if info.progress is not None else ""),
    ]
    width = max(len(k) for k, _ in lines)
    out = [f"{k + ':':<{width + 1}} {v}" for k, v in lines if v]
    if info.traceback:
        out.append("traceback:\n" + info.traceback.rstrip())
    return "\n".join(out) + "\n"


def _dead(info: TaskInfo, now: datetime) -> str:
    if info.dead_at is None:
        return ""
    since = ago(info.dead_at, now)
    return since if info.dead_reason in info.error else f"{since}: {info.dead_reason}"


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()
