"""Tests for frontdesk.domain.business_hours: parsing opening hours and SLA business time.

Dates used below (Europe/London):
- 2025-01-10 is a Friday in winter (GMT, UTC+0); 2025-06-13 a Friday in summer (BST, UTC+1).
- 2025-03-30 is the last Sunday of March: at 01:00 GMT the clock jumps to 02:00 BST.
- 2025-10-26 is the last Sunday of October: at 02:00 BST the clock falls back to 01:00 GMT.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from frontdesk.domain.business_hours import (
    BusinessCalendar,
    WeeklyHours,
    calendar_from_settings,
    parse_business_hours,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
OFFICE = "Mon-Fri 09:00-12:30,13:30-17:30"
OFFICE_AND_SATURDAY = "Mon-Fri 09:00-12:30,13:30-17:30; Sat 10:00-14:00"
H = timedelta(hours=1)
M = timedelta(minutes=1)


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=LONDON)


def calendar(spec: str = OFFICE, tz: ZoneInfo = LONDON, closed=()) -> BusinessCalendar:
    return BusinessCalendar(parse_business_hours(spec), tz, closed)


def settings(**overrides: object) -> SimpleNamespace:
    values: dict[str, object] = {
        "business_hours": OFFICE,
        "timezone": "Europe/London",
        "holidays_country": "",
        "holidays": [],
    }
    values.update(overrides)
    return SimpleNamespace(**values)


# --- parsing -------------------------------------------------------------------------------


def test_parse_office_hours_with_saturday() -> None:
    hours = parse_business_hours(OFFICE_AND_SATURDAY)
    weekday = ((9 * 60, 12 * 60 + 30), (13 * 60 + 30, 17 * 60 + 30))
    assert hours == WeeklyHours(
        days=(weekday, weekday, weekday, weekday, weekday, ((600, 840),), ()), always=False
    )
    assert hours.periods(6) == ()


def test_parse_always() -> None:
    hours = parse_business_hours("  Always ")
    assert hours.always is True
    assert hours.days == (((0, 1440),),) * 7


def test_parse_is_case_insensitive_and_accepts_full_names_and_lists() -> None:
    hours = parse_business_hours("mon,WED, friday 08:00-16:00")
    assert [bool(day) for day in hours.days] == [True, False, True, False, True, False, False]
    assert hours.days[2] == ((480, 960),)


def test_parse_range_wraps_around_the_week() -> None:
    hours = parse_business_hours("Fri-Mon 18:00-24:00")
    assert [bool(day) for day in hours.days] == [True, False, False, False, True, True, True]
    assert hours.days[6] == ((1080, 1440),)


def test_parse_single_day_range_and_spaces_around_dash() -> None:
    assert parse_business_hours("Tue - Tue 09:00 - 10:00").days[1] == ((540, 600),)


def test_parse_merges_touching_periods_and_groups_for_the_same_day() -> None:
    hours = parse_business_hours("Mon 09:00-12:00,12:00-13:00; Mon 14:00-15:00;")
    assert hours.days[0] == ((540, 780), (840, 900))


def test_parse_closed_keyword() -> None:
    hours = parse_business_hours("Mon-Fri 09:00-17:00; Sat-Sun closed")
    assert hours.days[5] == hours.days[6] == ()
    assert hours.days[4] == ((540, 1020),)


def test_weekly_hours_is_frozen() -> None:
    hours = parse_business_hours(OFFICE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hours.always = True  # type: ignore[misc]
    assert hash(hours) == hash(parse_business_hours(OFFICE))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Mox 09:00-17:00", '"Mox" is not a day (Mon..Sun)'),
        ("Mon-Frx 09:00-17:00", '"Frx" is not a day (Mon..Sun)'),
        ("Mon,,Tue 09:00-17:00", "empty day"),
        ("Mon-Wed-Fri 09:00-17:00", '"Mon-Wed-Fri" is not a day or a day range'),
        ("Mon 09:00-25:00", '"25:00" is not a time (00:00..24:00)'),
        ("Mon 09:60-17:00", '"09:60" is not a time'),
        ("Mon 09:00-24:30", '"24:30" is not a time'),
        ("Mon 17:00-09:00", '"17:00-09:00": end must be after start'),
        ("Mon 09:00-09:00", "end must be after start"),
        ("Mon 22:00-02:00", "end must be after start"),
        ("Mon 24:00-24:00", "end must be after start"),
        ("Mon 09:00-12:00,11:00-13:00", "Mon periods 09:00-12:00 and 11:00-13:00 overlap"),
        ("Mon-Fri 09:00-17:00; Wed 16:00-18:00", "Wed periods 09:00-17:00 and 16:00-18:00 overlap"),
        ("", "business hours are empty"),
        ("   ", "business hours are empty"),
        (" ; ;", "business hours are empty"),
        ("Mon-Sun closed", "business hours leave every day closed"),
        ("Mon-Fri", '"Mon-Fri" is not days then times'),
        ("09:00-17:00", '"09:00-17:00" is not days then times'),
        ("Mon 9-5", '"9-5" is not a period like 09:00-17:30'),
        ("Mon 09:00-17:00,", '"" is not a period'),
        ("Mon-Fri 09:00-17:00; Fri closed", 'Fri is given both hours and "closed"'),
    ],
)
def test_parse_errors_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_business_hours(spec)
    assert message in str(excinfo.value)


def test_config_schema_reports_the_parse_error_verbatim() -> None:
    from pydantic import ValidationError

    from frontdesk.config.schema import SlaConfig

    with pytest.raises(ValidationError, match=r'"Mox" is not a day \(Mon\.\.Sun\)'):
        SlaConfig(business_hours="Mox 09:00-17:00")
    assert SlaConfig(business_hours=OFFICE_AND_SATURDAY).business_hours == OFFICE_AND_SATURDAY


# --- add -----------------------------------------------------------------------------------


def test_friday_evening_plus_one_hour_is_monday_morning() -> None:
    due = calendar().add(london(2025, 1, 10, 17, 0), H)
    assert due == london(2025, 1, 13, 9, 30)
    assert due == datetime(2025, 1, 13, 9, 30, tzinfo=UTC)  # GMT: UTC+0
    assert due.tzinfo is UTC


def test_friday_evening_in_summer_returns_utc() -> None:
    due = calendar().add(london(2025, 6, 13, 17, 0), H)
    assert due == datetime(2025, 6, 16, 8, 30, tzinfo=UTC)  # 09:30 BST
    assert due.tzinfo is UTC


def test_lunch_break_is_skipped() -> None:
    cal = calendar()
    assert cal.add(london(2025, 1, 13, 12, 0), H) == london(2025, 1, 13, 14, 0)
    # Starting inside the break counts from 13:30.
    assert cal.add(london(2025, 1, 13, 12, 45), H) == london(2025, 1, 13, 14, 30)


def test_due_exactly_at_closing_is_the_closing_time() -> None:
    cal = calendar()
    assert cal.add(london(2025, 1, 13, 17, 0), 30 * M) == london(2025, 1, 13, 17, 30)
    assert cal.add(london(2025, 1, 13, 17, 0), 31 * M) == london(2025, 1, 14, 9, 1)


def test_start_before_opening_counts_from_opening() -> None:
    assert calendar().add(london(2025, 1, 13, 6, 0), 2 * H) == london(2025, 1, 13, 11, 0)


def test_saturday_window() -> None:
    cal = calendar(OFFICE_AND_SATURDAY)
    assert cal.add(london(2025, 1, 10, 17, 0), H) == london(2025, 1, 11, 10, 30)
    assert cal.add(london(2025, 1, 11, 13, 30), H) == london(2025, 1, 13, 9, 30)
    assert cal.is_open(london(2025, 1, 11, 13, 59))
    assert not cal.is_open(london(2025, 1, 11, 14, 0))


def test_multi_day_duration() -> None:
    # A working day here is 7.5 hours; 3 days from Monday 09:00 ends Wednesday 17:30.
    cal = calendar()
    assert cal.add(london(2025, 1, 13, 9, 0), 22 * H + 30 * M) == london(2025, 1, 15, 17, 30)
    # A working week (5 x 7.5 hours) from Monday 09:00 ends Friday 17:30.
    assert cal.add(london(2025, 1, 13, 9, 0), 37 * H + 30 * M) == london(2025, 1, 17, 17, 30)


def test_zero_duration_returns_start_even_when_closed() -> None:
    cal = calendar()
    saturday = london(2025, 1, 11, 3, 17)
    assert cal.add(saturday, timedelta(0)) == saturday
    assert cal.add(saturday, timedelta(0)).tzinfo is UTC


def test_negative_duration_is_an_error() -> None:
    with pytest.raises(ValueError, match="negative"):
        calendar().add(london(2025, 1, 13, 10, 0), -M)


def test_always_is_plain_arithmetic() -> None:
    cal = calendar("always")
    start = london(2025, 3, 29, 12, 0)  # across the spring-forward night
    # Real elapsed time, not Python's wall-clock ``start + 24h`` (which would be 11:00 UTC).
    assert cal.add(start, 24 * H) == datetime(2025, 3, 30, 12, 0, tzinfo=UTC)
    assert cal.add(start, 24 * H) == start.astimezone(UTC) + 24 * H
    assert cal.add(start, 24 * H).tzinfo is UTC
    assert cal.elapsed(start, start.astimezone(UTC) + 30 * H) == 30 * H
    assert cal.elapsed(start, london(2025, 3, 30, 12, 0)) == 23 * H  # the short night
    assert cal.is_open(london(2025, 12, 25, 3, 0))
    assert cal.next_open(start) == start


def test_always_with_a_closed_date_skips_that_local_day() -> None:
    cal = calendar("always", closed={date(2025, 3, 30)})
    # Saturday 12:00 GMT + 12h reaches Sunday 00:00 GMT; Sunday is closed and is 23 hours long
    # (spring forward), so the remaining hour runs from Monday 00:00 BST.
    assert cal.add(london(2025, 3, 29, 12, 0), 13 * H) == london(2025, 3, 31, 1, 0)
    assert cal.elapsed(london(2025, 3, 29, 12, 0), london(2025, 3, 31, 1, 0)) == 13 * H
    # Without the closed day the same calendar is plain arithmetic across the change.
    assert calendar("always", closed={date(2025, 1, 1)}).add(
        london(2025, 3, 29, 12, 0), 24 * H
    ) == datetime(2025, 3, 30, 12, 0, tzinfo=UTC)


# --- closed dates and holidays -------------------------------------------------------------


def test_extra_closed_date() -> None:
    cal = calendar(closed={date(2025, 1, 13)})
    assert cal.add(london(2025, 1, 10, 17, 0), H) == london(2025, 1, 14, 9, 30)
    assert not cal.is_open(london(2025, 1, 13, 10, 0))


def test_gb_christmas_from_settings() -> None:
    cal = calendar_from_settings(settings(holidays_country="GB"))
    # Christmas Eve 2024 is a Tuesday; the 25th and 26th are bank holidays.
    assert cal.add(london(2024, 12, 24, 17, 0), H) == london(2024, 12, 27, 9, 30)
    assert not cal.is_open(london(2024, 12, 25, 10, 0))
    # Christmas 2027 is a Saturday: the substitute days are Monday 27 and Tuesday 28.
    # The holidays object works 2027 out only when asked.
    assert cal.add(london(2027, 12, 24, 17, 0), H) == london(2027, 12, 29, 9, 30)


def test_country_holidays_combined_with_extra_dates() -> None:
    extra = [date(2024, 12, 27), date(2024, 12, 30)]
    cal = calendar_from_settings(settings(holidays_country="gb", holidays=extra))
    assert cal.add(london(2024, 12, 24, 17, 0), H) == london(2024, 12, 31, 9, 30)
    assert cal.next_open(london(2024, 12, 24, 17, 45)) == london(2024, 12, 31, 9, 0)


def test_extra_dates_without_a_country() -> None:
    cal = calendar_from_settings(settings(holidays=[date(2024, 12, 27)]))
    # No country: Christmas is an ordinary Wednesday.
    assert cal.add(london(2024, 12, 24, 17, 0), H) == london(2024, 12, 25, 9, 30)
    assert cal.add(london(2024, 12, 26, 17, 0), H) == london(2024, 12, 30, 9, 30)


def test_calendar_from_real_sla_config() -> None:
    from frontdesk.config.schema import SlaConfig

    sla = SlaConfig(
        business_hours=OFFICE,
        timezone="America/New_York",
        holidays_country="us",
        holidays=[date(2025, 7, 3)],
    )
    cal = calendar_from_settings(sla)
    assert cal.tz == NEW_YORK
    # Wednesday 2 July 17:00 EDT: Thursday is an extra date, Friday the 4th a US holiday.
    due = cal.add(datetime(2025, 7, 2, 17, 0, tzinfo=NEW_YORK), H)
    assert due == datetime(2025, 7, 7, 9, 30, tzinfo=NEW_YORK)
    assert due == datetime(2025, 7, 7, 13, 30, tzinfo=UTC)


def test_no_business_hours_for_three_years_is_an_error_not_a_hang() -> None:
    start = date(2025, 1, 1)
    closed = {start + timedelta(days=n) for n in range(4 * 366)}
    cal = calendar(closed=closed)
    with pytest.raises(ValueError, match="no business hours in the next 3 years"):
        cal.next_open(london(2025, 1, 1, 10, 0))
    with pytest.raises(ValueError, match="no business hours in the next 3 years"):
        cal.add(london(2025, 1, 1, 10, 0), H)
    # Bounded questions still have answers.
    assert not cal.is_open(london(2026, 5, 5, 10, 0))
    # Closed until 2029-01-03; then Thu 4, Fri 5, Mon 8 and Tue 9 January are open.
    assert cal.elapsed(london(2025, 1, 1), london(2029, 1, 10)) == 4 * (7 * H + 30 * M)


# --- DST -----------------------------------------------------------------------------------


def test_due_across_spring_forward() -> None:
    cal = calendar()
    due = cal.add(london(2025, 3, 28, 17, 0), H)  # Friday 17:00 GMT
    assert due == london(2025, 3, 31, 9, 30)  # Monday 09:30 BST
    assert due == datetime(2025, 3, 31, 8, 30, tzinfo=UTC)
    assert cal.elapsed(london(2025, 3, 28, 17, 0), due) == H


def test_due_across_fall_back() -> None:
    cal = calendar()
    due = cal.add(london(2025, 10, 24, 17, 0), H)  # Friday 17:00 BST
    assert due == london(2025, 10, 27, 9, 30)  # Monday 09:30 GMT
    assert due == datetime(2025, 10, 27, 9, 30, tzinfo=UTC)
    assert cal.elapsed(london(2025, 10, 24, 17, 0), due) == H


def test_a_week_spanning_a_clock_change_has_the_usual_business_time() -> None:
    cal = calendar(OFFICE_AND_SATURDAY)
    for monday in (date(2025, 3, 24), date(2025, 10, 20)):
        start = datetime(monday.year, monday.month, monday.day, tzinfo=LONDON)
        end = start + timedelta(days=14)  # wall-clock arithmetic: two Mondays at 00:00
        assert cal.elapsed(start, end) == 2 * (5 * 7.5 + 4) * H


def test_whole_day_on_clock_change_sundays_is_23_and_25_hours() -> None:
    cal = calendar("Sun 00:00-24:00")
    assert cal.elapsed(london(2025, 3, 29, 12, 0), london(2025, 3, 31, 12, 0)) == 23 * H
    assert cal.elapsed(london(2025, 10, 25, 12, 0), london(2025, 10, 27, 12, 0)) == 25 * H
    # The 23-hour Sunday ends at Monday 00:00 BST; one minute more runs into the next Sunday.
    assert cal.add(london(2025, 3, 29, 12, 0), 23 * H) == london(2025, 3, 31, 0, 0)
    assert cal.add(london(2025, 3, 29, 12, 0), 23 * H + M) == london(2025, 4, 6, 0, 1)
    assert cal.add(london(2025, 10, 25, 12, 0), 25 * H) == london(2025, 10, 27, 0, 0)


def test_periods_touching_the_skipped_hour() -> None:
    # 2025-03-30 01:00-02:00 does not exist in London.
    cal = calendar("Sun 00:30-03:00,05:00-06:00")
    day_start, day_end = london(2025, 3, 30, 0, 0), london(2025, 3, 31, 0, 0)
    # 00:30 GMT until 03:00 BST (02:00 UTC) is 1.5 real hours, then one more hour.
    assert cal.elapsed(day_start, day_end) == 2 * H + 30 * M
    assert cal.add(day_start, 30 * M) == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)  # 02:00 BST
    assert cal.is_open(datetime(2025, 3, 30, 0, 59, tzinfo=UTC))
    assert cal.is_open(datetime(2025, 3, 30, 1, 30, tzinfo=UTC))  # 02:30 BST
    assert not cal.is_open(datetime(2025, 3, 30, 2, 0, tzinfo=UTC))  # 03:00 BST


def test_period_edges_inside_the_skipped_hour_map_to_the_jump() -> None:
    # 01:30 never shows on 2025-03-30: it maps to the jump (01:00 GMT = 02:00 BST).
    cal = calendar("Sun 00:00-01:30,01:45-04:00")
    day_start, day_end = london(2025, 3, 30, 0, 0), london(2025, 3, 31, 0, 0)
    # 00:00-01:00 GMT, then 02:00-04:00 BST: three real hours.
    assert cal.elapsed(day_start, day_end) == 3 * H
    assert cal.add(day_start, H) == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)
    assert cal.add(day_start, H + M) == datetime(2025, 3, 30, 1, 1, tzinfo=UTC)
    assert cal.is_open(datetime(2025, 3, 30, 1, 0, tzinfo=UTC))
    # A normal Sunday has 01:30 + 02:15 = 3.75 hours.
    assert cal.elapsed(london(2025, 4, 6, 0, 0), london(2025, 4, 7, 0, 0)) == 3 * H + 45 * M


def test_period_entirely_inside_the_skipped_hour_is_empty() -> None:
    cal = calendar("Sun 01:00-02:00; Mon 09:00-10:00")
    # The Sunday period does not exist on 2025-03-30: the next open time is Monday.
    assert cal.next_open(london(2025, 3, 30, 0, 30)) == london(2025, 3, 31, 9, 0)
    assert cal.add(london(2025, 3, 29, 12, 0), 30 * M) == london(2025, 3, 31, 9, 30)
    # A week later it is an ordinary hour.
    assert cal.add(london(2025, 4, 6, 0, 0), 30 * M) == london(2025, 4, 6, 1, 30)


def test_period_over_the_repeated_hour_gets_both_passes() -> None:
    # 2025-10-26 01:00-02:00 happens twice in London.
    cal = calendar("Sun 00:30-03:00")
    assert cal.elapsed(london(2025, 10, 26, 0, 0), london(2025, 10, 27, 0, 0)) == 3 * H + 30 * M
    assert cal.add(london(2025, 10, 26, 0, 0), 3 * H + 30 * M) == datetime(
        2025, 10, 26, 3, 0, tzinfo=UTC
    )


def test_new_york_spring_forward() -> None:
    # 2025-03-09 02:00-03:00 does not exist in New York.
    cal = calendar("Sun 01:00-04:00", tz=NEW_YORK)
    start = datetime(2025, 3, 9, 0, 0, tzinfo=NEW_YORK)
    assert cal.elapsed(start, start + timedelta(days=1)) == 2 * H
    assert cal.add(start, 90 * M) == datetime(2025, 3, 9, 7, 30, tzinfo=UTC)  # 03:30 EDT


# --- is_open / next_open -------------------------------------------------------------------


def test_is_open_boundaries_are_half_open() -> None:
    cal = calendar()
    assert not cal.is_open(london(2025, 1, 13, 8, 59))
    assert cal.is_open(london(2025, 1, 13, 9, 0))
    assert cal.is_open(london(2025, 1, 13, 12, 29))
    assert not cal.is_open(london(2025, 1, 13, 12, 30))
    assert cal.is_open(london(2025, 1, 13, 13, 30))
    assert not cal.is_open(london(2025, 1, 13, 17, 30))
    assert not cal.is_open(london(2025, 1, 11, 10, 0))  # Saturday
    # An instant given in another zone is compared in London time: 09:30 UTC is 10:30 BST.
    assert cal.is_open(datetime(2025, 6, 16, 8, 0, tzinfo=UTC))
    assert not cal.is_open(datetime(2025, 6, 16, 7, 59, tzinfo=UTC))


def test_next_open() -> None:
    cal = calendar()
    open_instant = london(2025, 1, 13, 10, 15)
    assert cal.next_open(open_instant) == open_instant
    assert cal.next_open(open_instant).tzinfo is UTC
    assert cal.next_open(london(2025, 1, 13, 12, 45)) == london(2025, 1, 13, 13, 30)
    assert cal.next_open(london(2025, 1, 13, 17, 30)) == london(2025, 1, 14, 9, 0)
    assert cal.next_open(london(2025, 1, 11, 10, 0)) == london(2025, 1, 13, 9, 0)
    assert cal.next_open(london(2025, 3, 29, 10, 0)) == datetime(2025, 3, 31, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("method", ["is_open", "next_open", "add", "elapsed"])
def test_naive_datetimes_are_rejected(method: str) -> None:
    cal = calendar()
    naive = datetime(2025, 1, 13, 10, 0)
    aware = london(2025, 1, 13, 10, 0)
    calls = {
        "is_open": lambda: cal.is_open(naive),
        "next_open": lambda: cal.next_open(naive),
        "add": lambda: cal.add(naive, H),
        "elapsed": lambda: cal.elapsed(aware, naive),
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        calls[method]()


# --- elapsed and its relation to add -------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (london(2025, 1, 13, 9, 0), london(2025, 1, 13, 17, 30), 7 * H + 30 * M),
        (london(2025, 1, 13, 12, 0), london(2025, 1, 13, 14, 0), H),
        (london(2025, 1, 10, 17, 0), london(2025, 1, 13, 9, 30), H),
        (london(2025, 1, 11, 0, 0), london(2025, 1, 12, 23, 59), timedelta(0)),
        (london(2025, 1, 13, 10, 0), london(2025, 1, 13, 10, 0), timedelta(0)),
        (london(2025, 1, 13, 11, 0), london(2025, 1, 13, 10, 0), timedelta(0)),
    ],
)
def test_elapsed_examples(start: datetime, end: datetime, expected: timedelta) -> None:
    assert calendar().elapsed(start, end) == expected


@pytest.mark.parametrize(
    ("start", "duration"),
    [
        (london(2025, 1, 10, 17, 0), H),
        (london(2025, 1, 13, 12, 0), H),
        (london(2025, 1, 13, 9, 0), 7 * H + 30 * M),
        (london(2025, 3, 28, 16, 0), 20 * H),
        (london(2025, 10, 24, 11, 11), timedelta(days=3, minutes=7)),
        (london(2025, 1, 11, 4, 0), timedelta(seconds=1)),
    ],
)
def test_elapsed_inverts_add(start: datetime, duration: timedelta) -> None:
    cal = calendar(OFFICE_AND_SATURDAY)
    assert cal.elapsed(start, cal.add(start, duration)) == duration


def _naive_oracle_is_open(at: datetime, closed: set[date]) -> bool:
    """Open by looking at the London wall clock, for OFFICE_AND_SATURDAY (safe away from DST)."""
    local = at.astimezone(LONDON)
    if local.date() in closed:
        return False
    minute = local.hour * 60 + local.minute
    if local.weekday() < 5:
        return 540 <= minute < 750 or 810 <= minute < 1050
    if local.weekday() == 5:
        return 600 <= minute < 840
    return False


def test_property_add_and_elapsed_agree_over_many_starts() -> None:
    closed = {date(2025, 3, 31), date(2025, 10, 27)}
    cal = calendar(OFFICE_AND_SATURDAY, closed=closed)
    durations = [M, 29 * M, H, 3 * H + 17 * M, 8 * H, 40 * H, timedelta(days=4)]
    for first in (datetime(2025, 3, 24, tzinfo=UTC), datetime(2025, 10, 20, tzinfo=UTC)):
        for step in range(0, 14 * 24 * 60, 37):  # every 37 minutes for two weeks, over DST
            start = first + step * M
            for duration in durations:
                due = cal.add(start, duration)
                assert due >= start
                assert cal.elapsed(start, due) == duration
                # The due time is the earliest such instant: a minute earlier is short.
                assert cal.elapsed(start, due - M) == duration - M
            end = start + (step % 4000) * M
            # add(elapsed) lands on `end` when the desk is open just before it, else on the
            # earliest instant with that much business time (the last close, or `start`).
            back = cal.add(start, cal.elapsed(start, end))
            assert back <= end
            if end > start and cal.is_open(end - timedelta(microseconds=1)):
                assert back == end
            assert cal.elapsed(back, end) == timedelta(0)


def test_elapsed_matches_a_minute_by_minute_count() -> None:
    closed = {date(2025, 3, 31)}
    cal = calendar(OFFICE_AND_SATURDAY, closed=closed)
    start = london(2025, 3, 26, 11, 7)  # Wednesday before spring forward
    end = london(2025, 4, 2, 16, 3)
    minutes = int((end - start) / M)
    open_minutes = sum(_naive_oracle_is_open(start + n * M, closed) for n in range(minutes))
    assert cal.elapsed(start, end) == open_minutes * M
    assert all(
        cal.is_open(start + n * M) == _naive_oracle_is_open(start + n * M, closed)
        for n in range(0, minutes, 7)
    )


def test_add_over_two_weeks_is_exact() -> None:
    cal = calendar(OFFICE_AND_SATURDAY)
    start = london(2025, 3, 7, 17, 0)
    assert cal.elapsed(start, cal.add(start, timedelta(weeks=2))) == timedelta(weeks=2)
