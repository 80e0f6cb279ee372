"""``schedule:`` expressions read as Vixie cron reads them, in a time zone (when they fire:
``firetimes.py``).

Pure: no Celery, no Redis and no clock. Every function takes the instant it counts from, so
the DST behaviour below is unit-tested with fixed instants (tests/test_cron.py).

Forms: five fields ``minute hour day-of-month month day-of-week``, a macro (``@daily``, ...)
or ``@every <N>s|m|h``. A zone comes from the workflow's ``timezone:`` or a ``CRON_TZ=``
(or ``TZ=``) prefix; without one the expression is read in UTC.

Semantics follow cronie and Vixie cron 4.1 (the cron of most Linux systems):

* Day of month and day of week: when both are restricted, that is neither field starts with
  ``*``, a day matching EITHER fires (``0 0 1 * 1``: the 1st of each month and every
  Monday). When either starts with ``*`` (``*``, ``*/2``) both must match.
* A *fixed-time* expression (neither minute nor hour starts with ``*``, e.g. ``30 2 * * *``)
  names wall-clock times. One in the hour a spring DST change skips fires once, at the
  instant the clock jumps (02:30 in New York fires at 03:00 EDT), so a daily job is never
  lost; one in the hour repeated in autumn fires once, on its first pass (EDT).
* Any other expression (``*/15 * * * *``, ``0 * * * *``) keeps its real-time rhythm: it
  does not fire for skipped wall-clock times and fires on both passes of a repeated hour,
  so ``@hourly`` runs every real hour across both changes.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        start=1,
    )
}
DAY_NAMES = {name: n for n, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
DAYS_IN_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30}
ZONE_PREFIXES = ("CRON_TZ=", "TZ=")
_EVERY = re.compile(r"^@every\s+([0-9]{1,9})\s*([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
_NUMBER = re.compile(r"^[0-9]{1,4}$")


class ScheduleError(ValueError):
    """A ``schedule:`` or ``timezone:`` value we refuse; ``key`` names which one to fix."""

    def __init__(self, message: str, key: str = "schedule") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class _Field:
    label: str
    low: int
    high: int
    names: dict[str, int]
    allowed: str


FIELDS = (
    _Field("minute", 0, 59, {}, "0-59"),
    _Field("hour", 0, 23, {}, "0-23"),
    _Field("day of month", 1, 31, {}, "1-31"),
    _Field("month", 1, 12, MONTH_NAMES, "1-12 or jan-dec"),
    _Field("day of week", 0, 7, DAY_NAMES, "0-7 or sun-sat, Sunday = 0 or 7"),
)


@dataclass(frozen=True)
class Every:
    """``@every <N>s|m|h``: a fixed interval from when beat started or last ran the workflow."""

    seconds: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression in its zone (fields as sets of allowed values)."""

    text: str  # as written, without a CRON_TZ= prefix
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Sunday = 0
    either_day: bool  # both day fields restricted: a day matching either fires
    fixed_time: bool  # minute and hour restricted: DST gaps catch up, repeated hours fire once
    zone: ZoneInfo

    @property
    def zone_name(self) -> str:
        return self.zone.key

    def __str__(self) -> str:
        return self.text if self.zone_name == "UTC" else f"{self.text} ({self.zone_name})"

    def day_matches(self, day: datetime) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        return (in_month or in_week) if self.either_day else (in_month and in_week)


Spec = Cron | Every


def parse(text: str, timezone: str | None = None) -> Spec:
    """The schedule ``text`` means, in ``timezone`` or a ``CRON_TZ=`` prefix (else UTC).

    Raises:
        ScheduleError: naming the bad part, e.g. ``hour '25': ...``, and the key to fix.
    """
    spec = text.strip()
    zone_name, spec = _split_zone_prefix(spec)
    if zone_name is not None and timezone is not None:
        raise ScheduleError(
            "the zone is given twice, as a CRON_TZ= prefix and as `timezone:`: keep one"
        )
    key = "timezone" if timezone is not None else "schedule"
    zone_name = timezone if timezone is not None else zone_name
    zone = resolve_zone(zone_name, key) if zone_name is not None else ZoneInfo("UTC")
    if spec.startswith("@every"):
        if zone_name is not None:
            raise ScheduleError(
                "a time zone has no effect on '@every', which counts seconds from when beat "
                "starts: remove it, or use a cron expression such as '0 * * * *'",
                key,
            )
        return _parse_every(spec)
    fields_text = spec
    if spec.startswith("@"):
        if spec not in MACROS:
            known = ", ".join(sorted({*MACROS, "@every <N>s"}))
            raise ScheduleError(f"unknown macro {spec!r} (known: {known})")
        fields_text = MACROS[spec]
    return _parse_cron(spec, fields_text, zone)


def _split_zone_prefix(spec: str) -> tuple[str | None, str]:
    for prefix in ZONE_PREFIXES:
        if spec.startswith(prefix):
            zone, _, rest = spec[len(prefix) :].partition(" ")
            return zone, rest.strip()
    return None, spec


def resolve_zone(name: str, key: str = "timezone") -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Berlin``); a typo gets a suggestion."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    close = difflib.get_close_matches(name, sorted(available_timezones()), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ScheduleError(
        f"unknown time zone {name!r}: use an IANA name such as 'Europe/Berlin', "
        f"'America/New_York' or 'UTC'{hint}",
        key,
    )


def _parse_every(spec: str) -> Every:
    every = _EVERY.match(spec)
    if not every:
        raise ScheduleError("expected '@every <N>s', '@every <N>m' or '@every <N>h'")
    seconds = int(every.group(1)) * _UNIT_SECONDS[every.group(2)]
    if seconds < 1:
        raise ScheduleError("@every needs a positive interval, e.g. '@every 30s'")
    return Every(seconds, spec)


def _parse_cron(text: str, fields_text: str, zone: ZoneInfo) -> Cron:
    fields = fields_text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"expected 5 cron fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}; or '@every <N>s' / '@hourly'"
        )
    values = [_parse_field(f, v) for f, v in zip(FIELDS, fields, strict=True)]
    minutes, hours, days, months, weekdays = values
    weekdays = {0 if d == 7 else d for d in weekdays}  # 7 is Sunday too
    day_star, week_star = fields[2].startswith("*"), fields[4].startswith("*")
    cron = Cron(
        text=" ".join(fields) if not text.startswith("@") else text,
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=frozenset(weekdays),
        either_day=not day_star and not week_star,
        fixed_time=not fields[0].startswith("*") and not fields[1].startswith("*"),
        zone=zone,
    )
    if not cron.either_day and not any(
        d <= DAYS_IN_MONTH.get(m, 31) for m in cron.months for d in cron.days
    ):
        raise ScheduleError(
            f"day of month {fields[2]!r} never occurs in month {fields[3]!r}, so this "
            "schedule would never fire"
        )
    return cron


def _parse_field(field: _Field, text: str) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        try:
            values.update(_parse_part(field, part))
        except ValueError as exc:
            raise ScheduleError(
                f"{field.label} {text!r}: {exc} (allowed: {field.allowed})"
            ) from None
    return values


def _parse_part(field: _Field, part: str) -> range:
    body, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not _NUMBER.match(step_text) or int(step_text) < 1:
            raise ValueError(f"step {step_text!r} must be a whole number of at least 1")
        step = int(step_text)
    if body == "*":
        low, high = field.low, field.high
    elif "-" in body:
        first, _, last = body.partition("-")
        low, high = _value(field, first), _value(field, last)
        if low > high:
            hint = " (Sunday is 0 or 7: write 'mon-sun' as '1-7')" if field.high == 7 else ""
            raise ValueError(f"range {body!r} runs backwards{hint}")
    else:
        low = high = _value(field, body)
        if slash:
            raise ValueError(f"a step needs a range or '*': write '{body}-{field.high}/{step}'")
    return range(low, high + 1, step)


def _value(field: _Field, text: str) -> int:
    name = text.lower()
    if name in field.names:
        return field.names[name]
    if not _NUMBER.match(text):
        what = "a number or a name" if field.names else "a number"
        raise ValueError(f"{text!r} is not {what}" if text else "empty value")
    number = int(text)
    if not field.low <= number <= field.high:
        raise ValueError(f"{number} is out of range")
    return number


def schedule_problem(schedule: str | None, timezone: str | None) -> tuple[str, str] | None:
    """For the loader: ``(key, message)`` when ``schedule:``/``timezone:`` are refused."""
    if schedule is None:
        if timezone is None:
            return None
        return "timezone", "has no effect without `schedule:`: add one or remove `timezone:`"
    try:
        parse(schedule, timezone)
    except ScheduleError as exc:
        return exc.key, str(exc)
    return None
