"""When a cron expression fires, in its zone, following cronie across DST changes.

Pure and clock-free: every function takes the instant it counts from. A *fixed-time*
expression fires a wall-clock time the spring change skips once, when the clock jumps, and
one the autumn change repeats once, on its first pass; any other keeps its real-time rhythm
(see ``cron.py`` for the rules).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from .cron import Cron

MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
SEARCH_YEARS = 9  # Feb 29 can be 8 years away (2096 -> 2104): any valid expression fires sooner


@dataclass(frozen=True)
class Fire:
    """One fire time: the instant (UTC), its wall-clock time in the zone, and, when a DST
    change skipped the scheduled wall-clock time, that time (it fired when the clock jumped)."""

    at: datetime
    local: datetime
    skipped: datetime | None = None


def next_fire(cron: Cron, after: datetime) -> Fire | None:
    """The first fire strictly after ``after`` (an aware datetime); None if none in years.

    Wall-clock times are searched in order; each maps to 0, 1 or 2 instants (DST gap, normal,
    repeated hour). Near a DST change a later wall-clock time can be an earlier instant, so
    the search starts and ends one "swing" (the change in UTC offset) wider than the answer.
    """
    after = after.astimezone(UTC)
    start = after.astimezone(cron.zone).replace(tzinfo=None) - _swing(cron.zone, after)
    best: Fire | None = None
    limit: datetime | None = None
    for wall in _walls_from(cron, start):
        if limit is not None and wall > limit:
            break
        for fire in _fires_at(cron, wall):
            if fire.at > after and (best is None or fire.at < best.at):
                best = fire
                limit = wall + _swing(cron.zone, fire.at)
    return best


def upcoming(cron: Cron, after: datetime, count: int) -> list[Fire]:
    """The next ``count`` fires after ``after``, in order."""
    fires: list[Fire] = []
    while len(fires) < count and (fire := next_fire(cron, after)) is not None:
        fires.append(fire)
        after = fire.at
    return fires


def _swing(zone: ZoneInfo, instant: datetime) -> timedelta:
    """How far the zone's UTC offset moves within a day of ``instant`` (zero away from DST
    changes). Every real offset change, DST or not, is shorter than a day."""
    return _swing_around(zone, instant.replace(minute=0, second=0, microsecond=0))


@lru_cache(maxsize=4096)
def _swing_around(zone: ZoneInfo, hour: datetime) -> timedelta:
    # 3-hourly samples from 24 h before to 24 h after; no two offset changes are that close
    offsets = [
        (hour + timedelta(hours=3 * k)).astimezone(zone).utcoffset() or timedelta()
        for k in range(-8, 9)
    ]
    return max(offsets) - min(offsets)


def _fires_at(cron: Cron, wall: datetime) -> list[Fire]:
    """The instants at which the matching wall-clock time ``wall`` fires (see the module doc)."""
    first = wall.replace(tzinfo=cron.zone)
    second = wall.replace(tzinfo=cron.zone, fold=1)
    early, late = first.astimezone(UTC), second.astimezone(UTC)
    if early == late:
        return [Fire(early, first)]
    if first.astimezone(UTC).astimezone(cron.zone).replace(tzinfo=None) == wall:
        # a repeated hour: fold 0 is the first pass (the earlier instant)
        passes = [Fire(early, first)]
        if not cron.fixed_time:
            passes.append(Fire(late, second))
        return passes
    if not cron.fixed_time:
        return []  # skipped by a DST change, and the rhythm goes on after it
    jump = _change_between(cron.zone, late, early)
    return [Fire(jump, jump.astimezone(cron.zone), skipped=first)]


def _change_between(zone: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant in (low, high] where the zone's offset changes: where a gap ends."""
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


def _walls_from(cron: Cron, start: datetime) -> Iterator[datetime]:
    """Every wall-clock minute at or after ``start`` (naive) that the fields match, in order."""
    t = start.replace(second=0, microsecond=0)
    if t < start:
        t += MINUTE
    end_year = start.year + SEARCH_YEARS
    while t.year <= end_year:
        if t.month not in cron.months:
            t = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1)
        elif not cron.day_matches(t):
            t = datetime(t.year, t.month, t.day) + DAY
        elif t.hour not in cron.hours:
            t = _next_hour(cron.hours, t)
        elif (i := bisect.bisect_left(cron.minutes, t.minute)) == len(cron.minutes):
            t = t.replace(minute=0) + timedelta(hours=1)
        else:
            t = t.replace(minute=cron.minutes[i])
            yield t
            t += MINUTE


def _next_hour(hours: tuple[int, ...], t: datetime) -> datetime:
    """The start of the next allowed hour today, else midnight tomorrow."""
    i = bisect.bisect_right(hours, t.hour)
    if i < len(hours):
        return t.replace(hour=hours[i], minute=0)
    return datetime(t.year, t.month, t.day) + DAY
