"""The opening-hours format of ``sla.business_hours`` (and SLA policies): parsing and checking.

``"Mon-Fri 09:00-12:30,13:30-17:30; Sat 10:00-14:00"`` or ``"always"`` becomes a
:class:`WeeklyHours`; the business-time arithmetic on top of it is the domain's
(:mod:`frontdesk.domain.business_hours`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MINUTES_PER_DAY = 24 * 60

_GROUP_RE = re.compile(r"^([A-Za-z][A-Za-z\s,\-]*?)\s*(\d.*|closed)$", re.IGNORECASE)
_PERIOD_RE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")

Period = tuple[int, int]
"""An open period of one day: (start minute, end minute), 0 <= start < end <= 1440."""


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """Opening hours for each weekday (0 = Monday .. 6 = Sunday).

    ``days[weekday]`` is a sorted tuple of non-overlapping, non-adjacent
    ``(start_minute, end_minute)`` periods; an empty tuple is a closed day.
    ``always`` is true for the spec "always" (every day 00:00-24:00).
    """

    days: tuple[tuple[Period, ...], ...]
    always: bool = False

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise ValueError("opening hours need exactly seven days")

    def periods(self, weekday: int) -> tuple[Period, ...]:
        """The open periods of one weekday (0 = Monday)."""
        return self.days[weekday]


def parse_business_hours(spec: str) -> WeeklyHours:
    """Parse a business-hours spec.

    The spec is ``"always"`` or groups separated by ``;``, each a list of days
    or day ranges followed by periods or the word ``closed``::

        Mon-Fri 09:00-12:30,13:30-17:30; Sat 10:00-14:00
        Mon,Wed,Fri 08:00-16:00; Fri-Mon 18:00-24:00

    Day names are Mon..Sun (or spelled out), case-insensitive; a range may
    wrap around the week ("Fri-Mon"). Periods are ``HH:MM-HH:MM``, the end may
    be 24:00 and must be after the start; periods of one day may touch but not
    overlap. Raises ``ValueError`` with a short message naming the problem.
    """
    text = spec.strip()
    if not text:
        raise ValueError('business hours are empty (use "always" or e.g. "Mon-Fri 09:00-17:30")')
    if text.lower() == "always":
        return WeeklyHours(days=(((0, _MINUTES_PER_DAY),),) * 7, always=True)

    per_day: list[list[Period]] = [[] for _ in range(7)]
    marked_closed: set[int] = set()
    groups = [group.strip() for group in text.split(";")]
    if not any(groups):
        raise ValueError('business hours are empty (use "always" or e.g. "Mon-Fri 09:00-17:30")')
    for group in groups:
        if not group:
            continue
        match = _GROUP_RE.match(group)
        if match is None:
            raise ValueError(f'"{group}" is not days then times, like "Mon-Fri 09:00-17:30"')
        days = _parse_days(match.group(1))
        times = match.group(2).strip()
        if times.lower() == "closed":
            marked_closed.update(days)
            continue
        periods = [_parse_period(part.strip()) for part in times.split(",")]
        for day in days:
            per_day[day].extend(periods)

    result: list[tuple[Period, ...]] = []
    for day, periods in enumerate(per_day):
        if periods and day in marked_closed:
            raise ValueError(f'{_DAY_NAMES[day]} is given both hours and "closed"')
        result.append(_merge(day, periods))
    if not any(result):
        raise ValueError("business hours leave every day closed")
    return WeeklyHours(days=tuple(result))


def _parse_days(text: str) -> list[int]:
    days: list[int] = []
    for raw in text.split(","):
        item = re.sub(r"\s*-\s*", "-", raw.strip())
        if not item:
            raise ValueError(f'empty day in "{text.strip()}"')
        if item.count("-") > 1:
            raise ValueError(f'"{item}" is not a day or a day range like Mon-Fri')
        if "-" in item:
            first_text, last_text = item.split("-")
            first, last = _parse_day(first_text), _parse_day(last_text)
            span = (last - first) % 7
            days.extend((first + offset) % 7 for offset in range(span + 1))
        else:
            days.append(_parse_day(item))
    return days


def _parse_day(name: str) -> int:
    key = name.strip().lower()
    for index, (short, full) in enumerate(zip(_DAY_NAMES, _FULL_DAY_NAMES, strict=True)):
        if key in (short.lower(), full):
            return index
    raise ValueError(f'"{name.strip()}" is not a day (Mon..Sun)')


def _parse_period(text: str) -> Period:
    match = _PERIOD_RE.match(text)
    if match is None:
        raise ValueError(f'"{text}" is not a period like 09:00-17:30')
    start = _minute(match.group(1), match.group(2))
    end = _minute(match.group(3), match.group(4))
    if end <= start:
        raise ValueError(
            f'"{text}": end must be after start (split hours past midnight across two days)'
        )
    return start, end


def _minute(hours: str, minutes: str) -> int:
    hour, minute = int(hours), int(minutes)
    if not (hour <= 23 and minute <= 59) and not (hour == 24 and minute == 0):
        raise ValueError(f'"{hours}:{minutes}" is not a time (00:00..24:00)')
    return hour * 60 + minute


def _merge(day: int, periods: list[Period]) -> tuple[Period, ...]:
    """Sort one day's periods, join touching ones and reject overlaps."""
    merged: list[Period] = []
    for start, end in sorted(periods):
        if merged and start < merged[-1][1]:
            previous = merged[-1]
            raise ValueError(
                f"{_DAY_NAMES[day]} periods {_hhmm(previous)} and {_hhmm((start, end))} overlap"
            )
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _hhmm(period: Period) -> str:
    start, end = period
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
