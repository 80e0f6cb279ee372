"""cron.py: Vixie cron semantics, time zones and fire times across DST changes (pure, fast).

Every instant is fixed in the test: nothing here reads the clock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbook_celery.definition.cron import (
    Cron,
    Every,
    ScheduleError,
    parse,
    schedule_problem,
)
from runbook_celery.definition.firetimes import next_fire, upcoming

pytestmark = pytest.mark.timeout(120)

NEW_YORK = "America/New_York"
ROOT = Path(__file__).resolve().parent.parent


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def fire_times(text: str, zone: str | None, after: datetime, count: int) -> list[datetime]:
    cron = parse(text, zone)
    assert isinstance(cron, Cron)
    return [f.at for f in upcoming(cron, after, count)]


# ------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "minutes", "hours", "days", "months", "weekdays"),
    [
        (
            "*/20 9-17/4 * * *",
            (0, 20, 40),
            (9, 13, 17),
            set(range(1, 32)),
            set(range(1, 13)),
            set(range(7)),
        ),
        ("0 0 1,15 jan-mar,DEC *", (0,), (0,), {1, 15}, {1, 2, 3, 12}, set(range(7))),
        ("5 4 * * mon-fri", (5,), (4,), set(range(1, 32)), set(range(1, 13)), {1, 2, 3, 4, 5}),
        ("5 4 * * 5-7", (5,), (4,), set(range(1, 32)), set(range(1, 13)), {5, 6, 0}),
        ("5 4 * * 7", (5,), (4,), set(range(1, 32)), set(range(1, 13)), {0}),
        ("@weekly", (0,), (0,), set(range(1, 32)), set(range(1, 13)), {0}),
    ],
)
def test_fields_are_read_as_cron_reads_them(text, minutes, hours, days, months, weekdays):
    cron = parse(text)
    assert isinstance(cron, Cron)
    assert (cron.minutes, cron.hours) == (minutes, hours)
    assert (set(cron.days), set(cron.months), set(cron.weekdays)) == (days, months, weekdays)
    assert cron.zone_name == "UTC"


@pytest.mark.parametrize(
    ("text", "zone", "key", "expected"),
    [
        ("5/10 * * * *", None, "schedule", "a step needs a range or '*': write '5-59/10'"),
        ("* * * * fri-mon", None, "schedule", "'mon-sun' as '1-7'"),
        ("* 9-5 * * *", None, "schedule", "hour '9-5': range '9-5' runs backwards"),
        ("* * * foo *", None, "schedule", "month 'foo': 'foo' is not a number or a name"),
        ("* * * * 1,,2", None, "schedule", "day of week '1,,2': empty value"),
        ("0 0 30 2 *", None, "schedule", "never occurs in month '2'"),
        ("0 0 31 apr,jun *", None, "schedule", "would never fire"),
        ("0 3 * * *", "Europe/Berln", "timezone", "did you mean 'Europe/Berlin'?"),
        ("0 3 * * *", "../../etc/passwd", "timezone", "unknown time zone '../../etc/passwd'"),
        ("CRON_TZ=Mars/Olympus 0 3 * * *", None, "schedule", "unknown time zone 'Mars/Olympus'"),
        ("CRON_TZ=UTC 0 3 * * *", "UTC", "schedule", "the zone is given twice"),
        ("@every 5m", NEW_YORK, "timezone", "no effect on '@every'"),
        ("TZ=UTC @every 5m", None, "schedule", "no effect on '@every'"),
    ],
)
def test_refused_schedules_say_what_to_write_and_which_key(text, zone, key, expected):
    with pytest.raises(ScheduleError) as caught:
        parse(text, zone)
    assert caught.value.key == key
    assert expected in str(caught.value), str(caught.value)


def test_a_zone_comes_from_timezone_or_a_cron_tz_prefix():
    assert parse("0 3 * * *", "Europe/Berlin") == parse("CRON_TZ=Europe/Berlin 0 3 * * *")
    assert parse("TZ=Europe/Berlin 0 3 * * *") == parse("0 3 * * *", "Europe/Berlin")
    cron = parse("CRON_TZ=Europe/Berlin   0 3 * * *")
    assert isinstance(cron, Cron) and str(cron) == "0 3 * * * (Europe/Berlin)"
    assert parse("@every 90s") == Every(90, "@every 90s")


def test_timezone_without_a_schedule_is_a_problem():
    assert schedule_problem(None, "Europe/Berlin") == (
        "timezone",
        "has no effect without `schedule:`: add one or remove `timezone:`",
    )
    assert schedule_problem(None, None) is None
    assert schedule_problem("0 3 * * *", "Asia/Kathmandu") is None


# ------------------------------------------------- day of month / day of week (Vixie)


def test_both_day_fields_restricted_fire_on_either_the_date_or_the_weekday():
    # 0 0 1 * 1: the 1st of the month AND every Monday (Celery's crontab would need both)
    fires = fire_times("0 0 1 * 1", None, utc(2026, 5, 31), 6)
    assert fires == [
        utc(2026, 6, 1),  # a Monday that is also the 1st
        utc(2026, 6, 8),
        utc(2026, 6, 15),
        utc(2026, 6, 22),
        utc(2026, 6, 29),
        utc(2026, 7, 1),  # a Wednesday, fired as the 1st
    ]


def test_a_day_field_starting_with_a_star_means_both_must_match():
    # Vixie: */2 counts as unrestricted, so the weekday must match too (odd days that are Mondays)
    fires = fire_times("0 0 */2 * 1", None, utc(2026, 6, 1), 3)
    assert fires == [utc(2026, 6, 15), utc(2026, 6, 29), utc(2026, 7, 13)]
    assert fire_times("0 12 * * sun", None, utc(2026, 6, 1), 2) == [
        utc(2026, 6, 7, 12),
        utc(2026, 6, 14, 12),
    ]


def test_feb_29_is_found_years_ahead():
    assert fire_times("0 0 29 2 *", None, utc(2097, 3, 1), 1) == [utc(2104, 2, 29)]


# ------------------------------------------------------------------- DST changes


def test_a_daily_time_skipped_by_spring_forward_fires_when_the_clock_jumps():
    # New York, 8 March 2026: 02:00 EST becomes 03:00 EDT, so 02:30 does not exist that day
    cron = parse("30 2 * * *", NEW_YORK)
    assert isinstance(cron, Cron)
    fires = upcoming(cron, utc(2026, 3, 6, 12), 3)
    assert [f.at for f in fires] == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT: the instant of the jump
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]
    assert fires[1].skipped is not None and fires[1].skipped.hour == 2
    assert fires[1].local.hour == 3 and fires[1].local.utcoffset() == timedelta(hours=-4)
    assert fires[0].skipped is None and fires[2].skipped is None


def test_a_daily_time_repeated_by_fall_back_fires_once_on_its_first_pass():
    # New York, 1 November 2026: 01:00-02:00 happens twice (EDT, then EST)
    assert fire_times("30 1 * * *", NEW_YORK, utc(2026, 10, 31), 3) == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT; not again at 01:30 EST (06:30Z)
        utc(2026, 11, 2, 6, 30),
    ]


def test_hourly_keeps_firing_every_real_hour_across_both_changes():
    spring = fire_times("0 * * * *", NEW_YORK, utc(2026, 3, 8, 4, 30), 4)
    assert spring == [utc(2026, 3, 8, h) for h in (5, 6, 7, 8)]  # 00:00, 01:00 EST, 03:00 EDT, ...
    autumn = fire_times("@hourly", NEW_YORK, utc(2026, 11, 1, 3, 30), 5)
    assert autumn == [utc(2026, 11, 1, h) for h in (4, 5, 6, 7, 8)]  # 01:00 EDT and 01:00 EST


def test_from_inside_the_first_pass_the_second_pass_is_next():
    # 01:40 EDT: the next */30 is 01:00 EST, an earlier wall-clock time but a later instant
    assert fire_times("*/30 * * * *", NEW_YORK, utc(2026, 11, 1, 5, 40), 3) == [
        utc(2026, 11, 1, 6, 0),
        utc(2026, 11, 1, 6, 30),
        utc(2026, 11, 1, 7, 0),
    ]


def test_other_zones_and_half_hour_changes():
    # Berlin springs forward at 02:00 CET on 29 March 2026; 02:30 fires at 03:00 CEST = 01:00Z
    assert fire_times("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
    ]
    # Lord Howe Island moves its clock by 30 minutes: 02:00-02:30 is skipped on 4 October 2026
    assert fire_times("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3), 2) == [
        utc(2026, 10, 3, 15, 30),  # 02:30 +11:00, when the clock jumps
        utc(2026, 10, 4, 15, 15),  # 02:15 +11:00
    ]
    # a zone without DST: plain offset arithmetic
    assert fire_times("0 9 * * *", "Asia/Kathmandu", utc(2026, 1, 1), 1) == [utc(2026, 1, 1, 3, 15)]


# ------------------------------------------- against a minute-by-minute reference


def _reference_fires(cron: Cron, after: datetime, until: datetime) -> list[datetime]:
    """Fire times by looking at every UTC minute, as cronie's once-a-minute loop would."""

    def matches(wall: datetime) -> bool:
        in_month, in_week = wall.day in cron.days, wall.isoweekday() % 7 in cron.weekdays
        day = (in_month or in_week) if cron.either_day else (in_month and in_week)
        return (
            day
            and wall.month in cron.months
            and wall.hour in cron.hours
            and wall.minute in cron.minutes
        )

    out = []
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute <= until:
        wall = minute.astimezone(cron.zone)
        fires = matches(wall) and (wall.fold == 0 or not cron.fixed_time)
        before = (minute - timedelta(minutes=1)).astimezone(cron.zone)
        jump = wall.replace(tzinfo=None) - before.replace(tzinfo=None) - timedelta(minutes=1)
        if cron.fixed_time and jump > timedelta(0):
            skipped = before.replace(tzinfo=None)
            for k in range(1, int(jump / timedelta(minutes=1)) + 1):
                fires = fires or matches(skipped + timedelta(minutes=k))
        if fires:
            out.append(minute)
        minute += timedelta(minutes=1)
    return out


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    value = st.integers(low, high)
    return st.one_of(
        st.just("*"),
        value.map(str),
        st.tuples(value, value).map(lambda p: f"{min(p)}-{max(p)}"),
        st.integers(2, 9).map(lambda s: f"*/{s}"),
        st.lists(value, min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    )


ZONES = [NEW_YORK, "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago", "UTC"]
CHANGES = [
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15),
    utc(2026, 4, 5, 3),
    utc(2026, 9, 6, 4),
]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    minute=_field(0, 59),
    hour=_field(0, 23),
    day=st.sampled_from(["*", "1", "1-7", "*/2", "8,15"]),
    weekday=st.sampled_from(["*", "0", "1-5", "*/3", "6"]),
    zone=st.sampled_from(ZONES),
    change=st.sampled_from(CHANGES),
    offset_minutes=st.integers(-20 * 60, 3 * 60),
)
def test_fire_times_agree_with_a_minute_by_minute_reference(
    minute, hour, day, weekday, zone, change, offset_minutes
):
    cron = parse(f"{minute} {hour} {day} * {weekday}", zone)
    assert isinstance(cron, Cron)
    after = change + timedelta(minutes=offset_minutes, seconds=17)
    until = after + timedelta(days=1)
    expected = _reference_fires(cron, after, until)
    got = []
    moment = after
    while (fire := next_fire(cron, moment)) is not None and fire.at <= until:
        got.append(fire.at)
        moment = fire.at
    assert got == expected


def test_the_zone_is_an_iana_zone():
    cron = parse("0 3 * * *", "Europe/Berlin")
    assert isinstance(cron, Cron) and cron.zone == ZoneInfo("Europe/Berlin")


def test_zones_resolve_on_a_machine_without_system_zone_files():
    # PYTHONTZPATH="" hides /usr/share/zoneinfo, as on a slim container or Windows: the zone
    # data must then come from the tzdata package the project depends on
    code = (
        "from runbook_celery.definition.cron import parse; "
        "print(parse('30 2 * * *', 'America/New_York'))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONTZPATH": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "30 2 * * * (America/New_York)"
