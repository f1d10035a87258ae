"""Business-time arithmetic for SLA due times.

An SLA promise such as "first response within 4 hours" counts only the hours
the desk is open. This module parses the configured opening hours
(``sla.business_hours``), combines them with a time zone and closed dates
(public holidays from the ``holidays`` package and extra dates from config),
and answers four questions: is the desk open at an instant, when does it next
open, when has a given amount of business time elapsed after an instant, and
how much business time lies between two instants.

It is pure: no I/O, no clock, no module state. Every method takes and returns
timezone-aware datetimes; results are in UTC.

Opening hours are wall-clock times in the calendar's time zone, so a period
"09:00-17:30" is 8.5 real hours on most days. Across a DST change each wall
time maps to the first instant the clock shows it, or, for a time the clock
skips (spring forward), to the instant the clock jumps past it. That mapping
never decreases, so the open periods of consecutive days never overlap and the
arithmetic never drifts: business time is always real elapsed time inside the
mapped periods.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Container, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from holidays import HolidayBase

from frontdesk.config.hours import WeeklyHours, parse_business_hours

log = logging.getLogger(__name__)

__all__ = [
    "BusinessCalendar",
    "SlaHoursSettings",
    "WeeklyHours",
    "calendar_from_settings",
    "parse_business_hours",
]

# How far ahead a search for the next open period may run before giving up.
_SEARCH_YEARS = 3
_SEARCH_DAYS = 366 * _SEARCH_YEARS + 1
_ONE_DAY = timedelta(days=1)

def _to_utc(at: datetime, name: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {at.isoformat()}")
    return at.astimezone(UTC)


class BusinessCalendar:
    """Opening hours in a time zone, minus closed dates.

    ``closed_dates`` is any container of local dates on which the desk is
    closed all day: a set of ``date`` or a ``holidays`` object (which works
    out each year's holidays on first use).
    """

    def __init__(
        self,
        hours: WeeklyHours,
        tz: ZoneInfo,
        closed_dates: Collection[date] | HolidayBase = (),
    ) -> None:
        self.hours = hours
        self.tz = tz
        self._closed: Container[date]
        if isinstance(closed_dates, Mapping):
            self._closed = closed_dates  # a holidays object: keep its lazy lookup
        else:
            self._closed = frozenset(closed_dates)
        self._offsets = tuple(
            tuple((timedelta(minutes=start), timedelta(minutes=end)) for start, end in periods)
            for periods in hours.days
        )
        # "always" without closed dates is plain arithmetic on instants.
        self._plain = hours.always and self._closed == frozenset()

    def __repr__(self) -> str:
        return f"BusinessCalendar({self.hours!r}, {self.tz.key!r})"

    def is_open(self, at: datetime) -> bool:
        """Whether the desk is open at the instant ``at``."""
        at = _to_utc(at, "at")
        if self._plain:
            return True
        return any(start <= at < end for start, end in self._intervals(at, until=at))

    def next_open(self, at: datetime) -> datetime:
        """``at`` if open, else the start of the next open period (in UTC)."""
        at = _to_utc(at, "at")
        if self._plain:
            return at
        for start, _end in self._intervals(at):
            return max(start, at)
        raise AssertionError("unreachable: _intervals raises when it runs dry")  # pragma: no cover

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant when ``duration`` of business time has elapsed after ``start``.

        Time outside business hours and on closed dates does not count. A zero
        duration returns ``start`` (in UTC) even when the desk is closed; a
        duration that ends exactly at closing time returns the closing time.
        """
        start = _to_utc(start, "start")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        if self._plain or not duration:
            return start + duration
        remaining = duration
        for open_at, close_at in self._intervals(start):
            open_at = max(open_at, start)
            span = close_at - open_at
            if remaining <= span:
                return open_at + remaining
            remaining -= span
        raise AssertionError("unreachable: _intervals raises when it runs dry")  # pragma: no cover

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two instants; zero if ``end <= start``."""
        start, end = _to_utc(start, "start"), _to_utc(end, "end")
        if end <= start:
            return timedelta(0)
        if self._plain:
            return end - start
        total = timedelta(0)
        for open_at, close_at in self._intervals(start, until=end):
            if open_at >= end:
                break
            total += min(close_at, end) - max(open_at, start)
        return total

    def _intervals(
        self, after: datetime, until: datetime | None = None
    ) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals ``[open, close)`` in UTC, in order, that end after ``after``.

        With ``until`` the walk stops once past the local day of ``until``;
        without it, it raises ``ValueError`` after three years without an
        open period.
        """
        # Start a day early: around a DST fold, ``after`` may still read as the
        # previous local date although that day's periods are already over.
        day = after.astimezone(self.tz).date() - _ONE_DAY
        last_day = until.astimezone(self.tz).date() + _ONE_DAY if until is not None else None
        idle_days = 0
        while last_day is None or day <= last_day:
            found = False
            for interval in self._day_intervals(day):
                if interval[1] > after:
                    found = True
                    yield interval
            if found:
                idle_days = 0
            else:
                idle_days += 1
                if last_day is None and idle_days > _SEARCH_DAYS:
                    raise ValueError(f"no business hours in the next {_SEARCH_YEARS} years")
            day += _ONE_DAY

    def _day_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        periods = self._offsets[day.weekday()]
        if not periods or day in self._closed:
            return []
        midnight = datetime(day.year, day.month, day.day)
        offset = midnight.replace(tzinfo=self.tz).utcoffset()
        next_offset = (midnight + _ONE_DAY).replace(tzinfo=self.tz).utcoffset()
        if offset is not None and offset == next_offset:
            # No clock change today (the usual case): one offset fits every period.
            base = midnight.replace(tzinfo=UTC) - offset
            return [(base + start, base + end) for start, end in periods]
        intervals = []
        for start_minute, end_minute in self.hours.days[day.weekday()]:
            open_at = self._wall_to_utc(day, start_minute)
            close_at = self._wall_to_utc(day, end_minute)
            if open_at < close_at:  # empty when the whole period falls in a DST gap
                intervals.append((open_at, close_at))
        return intervals

    def _wall_to_utc(self, day: date, minute: int) -> datetime:
        """The first instant the local clock shows ``day`` + ``minute``.

        For a wall time skipped by a DST change, the instant the clock jumps
        past it.
        """
        wall = datetime.combine(day, time()) + timedelta(minutes=minute)
        instant = wall.replace(tzinfo=self.tz).astimezone(UTC)  # fold=0: first occurrence
        if instant.astimezone(self.tz).replace(tzinfo=None) == wall:
            return instant
        # In a gap, fold=0 applies the offset from before the change, which
        # lands after the jump, and fold=1 lands before it. Bisect for the jump.
        low = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        high = instant
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) // 2
            if middle.astimezone(self.tz).replace(tzinfo=None) >= wall:
                high = middle
            else:
                low = middle
        return high


class SlaHoursSettings(Protocol):
    """The part of the SLA settings a calendar is built from."""

    business_hours: str
    timezone: str
    holidays_country: str
    holidays: list[date]


def calendar_from_settings(sla: SlaHoursSettings) -> BusinessCalendar:
    """Build the calendar from the ``[sla]`` settings.

    With ``holidays_country`` set, that country's public holidays (from the
    ``holidays`` package) close the desk as well as the extra ``holidays``
    dates.
    """
    hours = parse_business_hours(sla.business_hours)
    tz = ZoneInfo(sla.timezone)
    closed: Collection[date] | HolidayBase = frozenset(sla.holidays)
    if sla.holidays_country:
        import holidays

        country = holidays.country_holidays(sla.holidays_country.upper())
        country.update(dict.fromkeys(sla.holidays, "Closed (frontdesk config)"))
        closed = country
    log.debug(
        "business calendar %s in %s, holidays %s + %d extra dates",
        sla.business_hours,
        sla.timezone,
        sla.holidays_country or "none",
        len(sla.holidays),
    )
    return BusinessCalendar(hours, tz, closed)
