"""CronSchedule: parsing, fire times in epoch ms, time zones and DST, and the errors it raises."""

from __future__ import annotations

import doctest
import itertools
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import vecna_async.scheduler.cron as cron_module
from vecna_async.exceptions import InvalidCronSpec
from vecna_async.scheduler.cron import CronSchedule

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")


def ms(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    *,
    tz: ZoneInfo = UTC,
    fold: int = 0,
) -> int:
    """Epoch milliseconds of a wall-clock time in ``tz``."""
    return (
        int(datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=fold).timestamp())
        * 1000
    )


def ticks(schedule: CronSchedule, start_ms: int, count: int) -> list[int]:
    out = [schedule.next_after(start_ms)]
    while len(out) < count:
        out.append(schedule.next_after(out[-1]))
    return out


def test_seed_spec_with_question_mark_fires_daily_at_six() -> None:
    schedule = CronSchedule.parse("0 6 * * ?")
    assert not schedule.has_seconds
    assert ticks(schedule, ms(2026, 1, 1), 3) == [
        ms(2026, 1, 1, 6),
        ms(2026, 1, 2, 6),
        ms(2026, 1, 3, 6),
    ]


def test_six_fields_put_seconds_first() -> None:
    schedule = CronSchedule.parse("*/5 * * * * *")
    assert schedule.has_seconds
    fired = ticks(schedule, ms(2026, 1, 1, 12, 0, 3) + 250, 30)
    assert fired[0] == ms(2026, 1, 1, 12, 0, 5)
    assert all(t % 5000 == 0 for t in fired)
    assert {b - a for a, b in itertools.pairwise(fired)} == {5000}


def test_five_fields_every_minute() -> None:
    schedule = CronSchedule.parse("* * * * *")
    fired = ticks(schedule, ms(2026, 1, 1, 23, 58, 30) + 1, 4)
    assert fired == [
        ms(2026, 1, 1, 23, 59),
        ms(2026, 1, 2),
        ms(2026, 1, 2, 0, 1),
        ms(2026, 1, 2, 0, 2),
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("@yearly", ms(2027, 1, 1)),
        ("@annually", ms(2027, 1, 1)),
        ("@monthly", ms(2026, 2, 1)),
        ("@weekly", ms(2026, 1, 4)),  # 2026-01-01 is a Thursday; weeks start on Sunday
        ("@daily", ms(2026, 1, 2)),
        ("@midnight", ms(2026, 1, 2)),
        ("@hourly", ms(2026, 1, 1, 1)),
        ("@Daily", ms(2026, 1, 2)),
        ("  @HOURLY\t", ms(2026, 1, 1, 1)),
    ],
)
def test_descriptors(spec: str, expected: int) -> None:
    assert CronSchedule.parse(spec).next_after(ms(2026, 1, 1)) == expected


def test_names_ranges_steps_and_lists() -> None:
    schedule = CronSchedule.parse("0 9-17/4 * JAN,jul mon-fri")
    # 2026-01-02 is a Friday, 03 and 04 the weekend.
    assert ticks(schedule, ms(2026, 1, 2), 4) == [
        ms(2026, 1, 2, 9),
        ms(2026, 1, 2, 13),
        ms(2026, 1, 2, 17),
        ms(2026, 1, 5, 9),
    ]


def test_whitespace_is_tolerated_and_spec_is_kept_stripped() -> None:
    schedule = CronSchedule.parse("  0\t6   * *  ? \n")
    assert schedule.spec == "0\t6   * *  ?"
    assert schedule.next_after(ms(2026, 1, 1)) == ms(2026, 1, 1, 6)


def test_next_after_is_strictly_after() -> None:
    schedule = CronSchedule.parse("*/5 * * * * *")
    on_tick = ms(2026, 1, 1, 12)
    assert schedule.next_after(on_tick) == on_tick + 5000
    assert schedule.next_after(on_tick - 1) == on_tick
    daily = CronSchedule.parse("0 6 * * *")
    assert daily.next_after(ms(2026, 1, 1, 6)) == ms(2026, 1, 2, 6)


def test_latest_at_or_before_on_and_between_ticks() -> None:
    schedule = CronSchedule.parse("0 6 * * *")
    assert schedule.latest_at_or_before(ms(2026, 1, 2, 6)) == ms(2026, 1, 2, 6)
    assert schedule.latest_at_or_before(ms(2026, 1, 2, 6) - 1) == ms(2026, 1, 1, 6)
    assert schedule.latest_at_or_before(ms(2026, 1, 2, 12, 34, 56) + 789) == ms(2026, 1, 2, 6)
    seconds = CronSchedule.parse("*/5 * * * * *")
    assert seconds.latest_at_or_before(ms(2026, 1, 1, 0, 0, 10)) == ms(2026, 1, 1, 0, 0, 10)
    assert seconds.latest_at_or_before(ms(2026, 1, 1, 0, 0, 14) + 999) == ms(2026, 1, 1, 0, 0, 10)


def test_time_zone_is_where_the_spec_is_evaluated() -> None:
    schedule = CronSchedule.parse("0 6 * * *", tz="Europe/Paris")
    assert schedule.next_after(ms(2026, 1, 1)) == ms(2026, 1, 1, 5)  # CET, UTC+1
    assert schedule.next_after(ms(2026, 7, 1)) == ms(2026, 7, 1, 4)  # CEST, UTC+2


def test_daily_job_in_the_spring_forward_gap_fires_right_after_it() -> None:
    schedule = CronSchedule.parse("30 2 * * *", tz="Europe/Paris")
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
    assert ticks(schedule, ms(2026, 3, 27, 12), 3) == [
        ms(2026, 3, 28, 2, 30, tz=PARIS),
        ms(2026, 3, 29, 3, 0, tz=PARIS),
        ms(2026, 3, 30, 2, 30, tz=PARIS),
    ]
    assert schedule.latest_at_or_before(ms(2026, 3, 29, 12, tz=PARIS)) == ms(2026, 3, 29, 1)


def test_daily_job_in_the_repeated_fall_back_hour_fires_once() -> None:
    schedule = CronSchedule.parse("30 2 * * *", tz="Europe/Paris")
    # 2026-10-25 03:00 CEST goes back to 02:00 CET: 02:30 happens twice, the job runs once.
    assert ticks(schedule, ms(2026, 10, 23, 12), 3) == [
        ms(2026, 10, 24, 0, 30),
        ms(2026, 10, 25, 0, 30),  # the first 02:30, CEST
        ms(2026, 10, 26, 1, 30),
    ]
    second_copy = ms(2026, 10, 25, 2, 30, tz=PARIS, fold=1)
    assert second_copy == ms(2026, 10, 25, 1, 30)
    assert schedule.latest_at_or_before(second_copy + 60_000) == ms(2026, 10, 25, 0, 30)


def test_hourly_job_runs_in_both_copies_of_the_repeated_hour() -> None:
    schedule = CronSchedule.parse("0 * * * *", tz="Europe/Paris")
    fall = ticks(schedule, ms(2026, 10, 24, 23, 30), 3)
    assert fall == [ms(2026, 10, 25, 0), ms(2026, 10, 25, 1), ms(2026, 10, 25, 2)]
    spring = ticks(schedule, ms(2026, 3, 28, 23, 30), 3)  # 02:00 CET does not exist
    assert spring == [ms(2026, 3, 29, 0), ms(2026, 3, 29, 1), ms(2026, 3, 29, 2)]


@pytest.mark.parametrize(
    "spec", ["30 2 * * *", "0 * * * *", "*/7 * * * *", "15 1-3 * * *", "*/20 * * * * *"]
)
@pytest.mark.parametrize("day", [(2026, 3, 29), (2026, 10, 25)])
def test_next_and_latest_agree_across_dst(spec: str, day: tuple[int, int, int]) -> None:
    schedule = CronSchedule.parse(spec, tz="Europe/Paris")
    start = ms(*day) - 86_400_000
    for ts in range(start, start + 2 * 86_400_000, 613_357):  # odd step: many offsets
        after, latest = schedule.next_after(ts), schedule.latest_at_or_before(ts)
        assert latest <= ts < after
        assert after % 1000 == 0
        assert schedule.next_after(latest) == after
        assert schedule.latest_at_or_before(after) == after
        assert schedule.latest_at_or_before(after - 1) == latest


def test_properties_str_repr_and_equality() -> None:
    schedule = CronSchedule.parse(" 0 6 * * ? ", tz="Europe/Paris")
    assert (schedule.spec, schedule.tz, schedule.has_seconds) == (
        "0 6 * * ?",
        "Europe/Paris",
        False,
    )
    assert repr(schedule) == "CronSchedule('0 6 * * ?', tz='Europe/Paris')"
    assert str(schedule) == "0 6 * * ? (Europe/Paris)"
    assert str(CronSchedule.parse("@daily")) == "@daily"
    assert CronSchedule.parse("@daily").tz == "UTC"
    assert schedule == CronSchedule("0 6 * * ?", "Europe/Paris")
    assert len({schedule, CronSchedule.parse("0 6 * * ?", "Europe/Paris")}) == 1
    assert schedule != CronSchedule.parse("0 6 * * ?")
    with pytest.raises(AttributeError):
        schedule.spec = "* * * * *"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "tz", "problem"),
    [
        ("", None, "it is empty"),
        ("   ", None, "it is empty"),
        ("* * *", None, "found 3 fields, expected 5"),
        ("*/5 * * * * * *", None, "found 7 fields, expected 5 (minute hour day-of-month"),
        ("0 0 1 1 * * 2026", None, "a year field is not supported"),
        ("@reboot", None, "unknown descriptor; expected one of @yearly"),
        ("@daily 5", None, "unknown descriptor"),
        ("61 * * * *", None, "minute field '61' is out of range 0-59"),
        ("60 * * * * *", None, "second field '60' is out of range 0-59"),
        ("* 24 * * *", None, "hour field '24' is out of range 0-23"),
        ("* * 0 * *", None, "day-of-month field '0' is out of range 1-31"),
        ("* * * 13 *", None, "month field '13' is out of range 1-12"),
        ("* * * * 8", None, "day-of-week field '8' is out of range 0-7"),
        ("* * * smarch *", None, "month field 'smarch' is not a number or a name like 'jan'"),
        ("x * * * *", None, "minute field 'x' is not a number"),
        ("1,,2 * * * *", None, "minute field '1,,2' is not valid"),
        ("5-2 * * * *", None, "minute field range '5-2' runs backwards"),
        ("*/0 * * * *", None, "minute field step in '*/0' must be between 1 and 59"),
        ("*/90 * * * *", None, "step in '*/90' must be between 1 and 59"),
        ("H * * * *", None, "minute field 'H': the L, W, # and H forms are not supported"),
        ("0 0 L * *", None, "day-of-month field 'L': the L, W, # and H forms are not supported"),
        ("0 0 15W * *", None, "'15W': the L, W, # and H forms are not supported"),
        ("0 0 * * 1#2", None, "'1#2': the L, W, # and H forms are not supported"),
        ("0 0 30 2 *", None, "it never fires: no month in '2' has day-of-month '30'"),
        ("0 6 * * ?", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("0 6 * * ?", "", "unknown time zone ''"),
        ("0 6 * * ?", "../../etc/passwd", "unknown time zone '../../etc/passwd'"),
    ],
)
def test_invalid_specs_name_the_spec_and_the_problem(
    spec: str, tz: str | None, problem: str
) -> None:
    with pytest.raises(InvalidCronSpec) as caught:
        CronSchedule.parse(spec, tz)
    assert isinstance(caught.value, ValueError)
    assert caught.value.spec == spec.strip()
    assert f"invalid cron spec {spec.strip()!r}" in str(caught.value)
    assert problem in caught.value.reason


def test_leap_day_is_valid_and_fires_in_leap_years() -> None:
    schedule = CronSchedule.parse("0 0 29 2 *")
    assert schedule.next_after(ms(2026, 1, 1)) == ms(2028, 2, 29)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(cron_module).failed == 0


def test_croniter_is_imported_only_by_the_cron_module() -> None:
    package = Path(cron_module.__file__).parents[1]
    importing = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+croniter\b", path.read_text(), re.M)
    }
    assert importing == {"scheduler/cron.py"}
