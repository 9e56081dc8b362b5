"""Schedules declared in code (``@server.periodic``), as Celery's ``beat_schedule`` or arq's
``cron_jobs``: every process declares them, and each worker or embedded scheduler writes them
to Redis when it starts, under a code of their own.

Writing one is a replace (``PeriodicStore.add``), never an addition: a definition already stored
under its code keeps its next fire time when its spec and time zone are unchanged, so however many
processes declare it, and however often they restart, each tick fires once, none is skipped, and a
tick missed while nothing ran still fires once. A Redis that lost its data gets the declared
schedules back at the next start.

>>> declared = DeclaredSchedules()
>>> declared.declare("*/5 * * * *", task="report", tz="Europe/Paris", code=None).code
'report'
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vecna_async.keys import check_name
from vecna_async.scheduler.periodic import schedule


@dataclass(frozen=True, slots=True)
class DeclaredSchedule:
    """One ``@server.periodic``: run ``task`` (no arguments) on ``spec`` in zone ``tz``,
    stored under ``code``."""

    code: str
    spec: str
    tz: str
    task: str


class DeclaredSchedules:
    """The schedules declared on one Server, by code."""

    def __init__(self) -> None:
        self._by_code: dict[str, DeclaredSchedule] = {}

    def declare(
        self, spec: str, *, task: str, tz: str | None, code: str | None
    ) -> DeclaredSchedule:
        """Check and record a schedule: a bad spec or zone raises InvalidCronSpec now (at
        import, not at the first tick); a code declared twice for another schedule, ValueError."""
        sched = schedule(spec.strip(), tz or "UTC")
        declared = DeclaredSchedule(
            check_name("periodic code", code or task), sched.spec, sched.tz, task
        )
        existing = self._by_code.get(declared.code)
        if existing is not None and existing != declared:
            raise ValueError(
                f"periodic code {declared.code!r} is already declared for task {existing.task!r} "
                f"({existing.spec!r}); give this one another code="
            )
        self._by_code[declared.code] = declared
        return declared

    def __iter__(self) -> Iterator[DeclaredSchedule]:
        return iter(list(self._by_code.values()))

    def __len__(self) -> int:
        return len(self._by_code)
