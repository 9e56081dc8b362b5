"""Cron specs for periodic tasks: parse once, then ask for fire times in epoch milliseconds.

This is the only module that imports croniter: the rest of vecna_async sees `CronSchedule`.
"""

from __future__ import annotations

import copy
import re
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from vecna_async.exceptions import InvalidCronSpec

if TYPE_CHECKING:
    pass

__all__ = ["CronSchedule"]

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAYS = {name: number for number, name in enumerate(_DAY_NAMES)}
# (name, low, high, names) in 6-field order; a 5-field spec starts at the minute.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_ITEM = re.compile(r"(?:\*|(?P<lo>[0-9a-z]+)(?:-(?P<hi>[0-9a-z]+))?)(?:/(?P<step>[0-9]+))?", re.I)
# Quartz/Jenkins forms croniter knows (L, W, #, H) but this module does not document.
_EXTENSION = re.compile(r"\d*[lw]|lw|h\b.*|.*#.*", re.I)
_SHAPES = "numbers, '*', '?', ranges 'a-b', steps '/n' and lists 'a,b'"


def _check_field(spec: str, text: str, field: tuple[str, int, int, dict[str, int]]) -> None:
    # croniter's errors name neither the field nor the value, and it accepts syntax we do not
    # document (L, W, #, H, backwards ranges), so the grammar is checked here first.
    name, low, high, names = field
    for item in text.split(","):
        if _EXTENSION.fullmatch(item):
            reason = f"{name} field {item!r}: the L, W, # and H forms are not supported"
            raise InvalidCronSpec(spec, reason)
        match = _ITEM.fullmatch(item)
        if match is None:
            shapes = f"{_SHAPES} (or names like '{next(iter(names))}')" if names else _SHAPES
            raise InvalidCronSpec(spec, f"{name} field {text!r} is not valid; use {shapes}")
        values: list[int] = []
        for raw in (match["lo"], match["hi"]):
            if raw is None:
                continue
            value = int(raw) if raw.isdigit() else names.get(raw.lower())
            if value is None:
                kind = f"a number or a name like '{next(iter(names))}'" if names else "a number"
                raise InvalidCronSpec(spec, f"{name} field {raw!r} is not {kind}")
            if not low <= value <= high:
                raise InvalidCronSpec(spec, f"{name} field {raw!r} is out of range {low}-{high}")
            values.append(value)
        if len(values) == 2 and values[0] > values[1]:
            reason = f"{name} field range {item!r} runs backwards; split it in two"
            raise InvalidCronSpec(spec, reason)
        if match["step"] is not None and not 0 < int(match["step"]) <= high - low:
            reason = f"{name} field step in {item!r} must be between 1 and {high - low}"
            raise InvalidCronSpec(spec, reason)


class CronSchedule:
    """A parsed cron spec evaluated in one IANA time zone; fire times are epoch milliseconds.

    Five fields (minute hour day-of-month month day-of-week) or six with the seconds first;
    ``?`` means ``*``; ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
    A day-of-month and a day-of-week that are both restricted match either (classic cron).

    Across DST changes: a wall time that a spring-forward skips fires at the first instant
    after the gap; on a fall-back, a spec with a fixed hour fires once (the first 02:30), while
    a spec whose hour is ``*`` fires in both copies of the repeated hour, which really elapse.

    >>> every_5s = CronSchedule.parse("*/5 * * * * *")
    >>> every_5s.next_after(1_700_000_001_234)
    1700000005000
    >>> CronSchedule.parse("0 6 * * ?", tz="Europe/Paris")
    CronSchedule('0 6 * * ?', tz='Europe/Paris')
    """

    __slots__ = ("_hour_is_star", "_spec", "_template", "_tz", "_zone")

    def __init__(self, spec: str, tz: str | None = None) -> None:
        """Parse ``spec``; same as `CronSchedule.parse`."""
        self._spec = spec.strip()
        self._tz = "UTC" if tz is None else tz
        fields = _DESCRIPTORS.get(self._spec.lower(), self._spec).split()
        fields = ["*" if f == "?" else f for f in fields]
        self._check(fields)
        try:
            self._zone = ZoneInfo(self._tz)
        except (ZoneInfoNotFoundError, ValueError):
            reason = f"unknown time zone {self._tz!r}; expected an IANA name like 'Europe/Paris'"
            raise InvalidCronSpec(self._spec, reason) from None
        # Imported here, not at the top: a process that never parses a spec (most web apps,
        # most workers) does not load croniter and dateutil.
        from croniter import CroniterBadDateError, croniter

        try:
            # The start time only carries the zone: every call passes its own.
            self._template = croniter(
                " ".join(fields),
                datetime(2000, 1, 1, tzinfo=self._zone),
                second_at_beginning=len(fields) == 6,
            )
            # A day that none of the listed months has (30 in February) passes the grammar
            # check but never matches; croniter only finds out when asked for a time.
            copy.copy(self._template).get_next(float)  # (a copy: the template keeps its start)
        except CroniterBadDateError:
            dom, month = fields[-3], fields[-2]
            reason = f"it never fires: no month in {month!r} has day-of-month {dom!r}"
            raise InvalidCronSpec(self._spec, reason) from None
        except (ValueError, KeyError) as exc:  # the grammar check should leave none; be safe
            raise InvalidCronSpec(self._spec, str(exc)) from None
        # croniter puts the seconds last, so the hour is index 1 for 5 and 6 fields alike.
        self._hour_is_star = self._template.expanded[1] == ["*"]

    def _check(self, fields: list[str]) -> None:
        if not fields:
            reason = "it is empty; expected 5 or 6 fields or a descriptor like '@daily'"
            raise InvalidCronSpec(self._spec, reason)
        if fields[0].startswith("@"):
            known = ", ".join(_DESCRIPTORS)
            raise InvalidCronSpec(self._spec, f"unknown descriptor; expected one of {known}")
        if len(fields) not in (5, 6):
            year = "; a year field is not supported" if len(fields) == 7 else ""
            raise InvalidCronSpec(
                self._spec,
                f"found {len(fields)} fields, expected 5 (minute hour day-of-month month "
                f"day-of-week) or 6 (the same with seconds first){year}",
            )
        for text, field in zip(fields, _FIELDS[6 - len(fields) :], strict=True):
            _check_field(self._spec, text, field)

    @classmethod
    def parse(cls, spec: str, tz: str | None = None) -> CronSchedule:
        """Parse a cron spec evaluated in ``tz`` (an IANA zone name, default UTC).

        Raises `InvalidCronSpec` naming the spec and what is wrong with it.
        """
        return cls(spec, tz)

    @property
    def spec(self) -> str:
        """The spec as given, stripped of surrounding whitespace."""
        return self._spec

    @property
    def tz(self) -> str:
        """The IANA time zone the spec is evaluated in."""
        return self._tz

    @property
    def has_seconds(self) -> bool:
        """Whether the spec has a seconds field (6 fields, seconds first)."""
        return len(self._template.expanded) == 6

    def next_after(self, ts_ms: int) -> int:
        """The first fire time strictly after ``ts_ms``, both in epoch milliseconds."""
        return self._step(ts_ms // 1000, backwards=False) * 1000

    def latest_at_or_before(self, ts_ms: int) -> int:
        """The most recent fire time at or before ``ts_ms``, both in epoch milliseconds."""
        # Fire times are whole seconds, so "<= ts_ms" is "strictly before the next second".
        return self._step(ts_ms // 1000 + 1, backwards=True) * 1000

    def _step(self, start_s: int, backwards: bool) -> int:
        # A copy per call keeps the shared template free of croniter's cursor state, so threads
        # and interleaved callers cannot see each other's position; it costs ~2 µs.
        it = copy.copy(self._template)
        while True:
            # (set_current, not get_next's start argument: croniter < 3.0.3 lacks the argument)
            it.set_current(start_s, force=True)
            found = round(it.get_prev(float) if backwards else it.get_next(float))
            # croniter fires both copies of a repeated wall time on a fall-back; keep the first
            # unless the spec runs every hour, where both copies are real, distinct hours.
            if self._hour_is_star or datetime.fromtimestamp(found, self._zone).fold == 0:
                return found
            start_s = found

    def __repr__(self) -> str:
        return f"CronSchedule({self._spec!r}, tz={self._tz!r})"

    def __str__(self) -> str:
        return self._spec if self._tz == "UTC" else f"{self._spec} ({self._tz})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronSchedule):
            return NotImplemented
        return (self._spec, self._tz) == (other._spec, other._tz)

    def __hash__(self) -> int:
        return hash((self._spec, self._tz))
