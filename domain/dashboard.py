"""The dashboard's figures: the report of a period and its series by day and by week.

The summary is :func:`frontdesk.domain.report.report_of` of the same loaded period and filters,
so it is exactly what ``frontdesk report --json --since ... --channel ... --tag ...`` says for
that moment. The series split the same conversations (those that began in the period) by when
they began, in the calendar's time zone (``sla.timezone``): days are local dates, weeks start on
Monday at local midnight. Each week's first-response, SLA and CSAT figures are
:func:`frontdesk.domain.report.figures` of the conversations that began that week.

The open backlog is not bound to the period: it is every conversation not resolved now (open,
pending or snoozed), through the same channel and tag filters, by how long ago it began.

Pure reading and arithmetic: no HTML here (:mod:`frontdesk.daemon.dashboard` draws it) and no
Slack (:mod:`frontdesk.daemon.process.digest` words the weekly digest).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.report import NO_FILTERS, Filters, Period, figures, load_period, report_of
from frontdesk.storage.models import Conversation

BACKLOG_BUCKETS: tuple[tuple[str, timedelta | None], ...] = (
    ("<1h", timedelta(hours=1)),
    ("1–4h", timedelta(hours=4)),
    ("4–24h", timedelta(hours=24)),
    ("1–3d", timedelta(days=3)),
    ("3–7d", timedelta(days=7)),
    (">7d", None),
)
"""The backlog's age buckets: a label and the age it stays under (None: the rest)."""

BACKLOG_STATUSES = ("open", "pending", "snoozed")
TOP_TAGS = 8


@dataclass(frozen=True)
class Window:
    """The period a dashboard shows: ``since`` up to ``now``, in the calendar's time zone."""

    since: timedelta
    now: datetime
    tz: ZoneInfo

    @property
    def start(self) -> datetime:
        return self.now - self.since

    def local_day(self, at: datetime) -> date:
        return at.astimezone(self.tz).date()

    def days(self) -> list[date]:
        first, last = self.local_day(self.start), self.local_day(self.now)
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]

    def week_of(self, at: datetime) -> date:
        """The Monday (a local date) of the week ``at`` falls in."""
        day = self.local_day(at)
        return day - timedelta(days=day.weekday())

    def weeks(self) -> list[date]:
        first, last = self.week_of(self.start), self.week_of(self.now)
        return [first + timedelta(weeks=n) for n in range((last - first).days // 7 + 1)]


def _week_figures(rows: list[Conversation], calendar: BusinessCalendar,
                  now: datetime) -> dict[str, Any]:
    f = figures(rows, calendar, now, {})
    keep = ("conversations", "answered", "first_response_seconds_median",
            "first_response_seconds_p90", "sla_met", "sla_breached", "sla_met_share", "ratings",
            "csat_average", "csat_satisfied_share")
    return {k: f[k] for k in keep}


def series(period: Period, calendar: BusinessCalendar, window: Window, *,
           top_tags: int = TOP_TAGS) -> dict[str, Any]:
    """The day and week series of a (narrowed) period's conversations."""
    rows = period.rows
    channels = sorted({c.channel for c in rows})
    days = window.days()
    per_day: dict[date, Counter[str]] = {d: Counter() for d in days}
    for c in rows:
        per_day.setdefault(window.local_day(c.created_at), Counter())[c.channel] += 1
    weeks = window.weeks()
    by_week: dict[date, list[Conversation]] = {w: [] for w in weeks}
    for c in rows:
        by_week.setdefault(window.week_of(c.created_at), []).append(c)
    tag_total: Counter[str] = Counter()
    tag_weekly: dict[str, Counter[date]] = {}
    for c in rows:
        for tag in dict.fromkeys(period.tags.get(c.id, [])):
            tag_total[tag] += 1
            tag_weekly.setdefault(tag, Counter())[window.week_of(c.created_at)] += 1
    top = sorted(tag_total, key=lambda t: (-tag_total[t], t))[:top_tags]
    return {
        "channels": channels,
        "days": [{"day": d.isoformat(), "total": sum(per_day[d].values()),
                  "channels": {ch: per_day[d][ch] for ch in channels}} for d in sorted(per_day)],
        "weeks": [{"week": w.isoformat(), **_week_figures(by_week[w], calendar, window.now)}
                  for w in sorted(by_week)],
        "tags": [{"tag": t, "conversations": tag_total[t],
                  "weeks": {w.isoformat(): tag_weekly[t][w] for w in sorted(by_week)}}
                 for t in top],
    }


async def backlog(session: AsyncSession, *, now: datetime,
                  filters: Filters = NO_FILTERS) -> list[dict[str, Any]]:
    """Every conversation not resolved now, by age (since it began) and status:
    ``[{"bucket": "<1h", "total": 3, "open": 2, "pending": 1, "snoozed": 0}, ...]``."""
    query = select(Conversation.channel, Conversation.tags, Conversation.status,
                   Conversation.created_at).where(Conversation.status != "resolved")
    if filters.channel is not None:
        query = query.where(Conversation.channel == filters.channel)
    counts = {label: Counter[str]() for label, _ in BACKLOG_BUCKETS}
    for _channel, tags, status, created_at in (await session.execute(query)).all():
        if filters.tag is not None and filters.tag not in (tags or []):
            continue
        age = now - created_at
        label = next(label for label, under in BACKLOG_BUCKETS if under is None or age < under)
        counts[label][status] += 1
    return [{"bucket": label, "total": sum(counts[label].values()),
             **{s: counts[label][s] for s in BACKLOG_STATUSES}} for label, _ in BACKLOG_BUCKETS]


async def dashboard_figures(session: AsyncSession, *, since: timedelta, now: datetime,
                            calendar: BusinessCalendar, filters: Filters = NO_FILTERS,
                            top_tags: int = TOP_TAGS) -> dict[str, Any]:
    """Everything the dashboard shows for one period and filters:

    ``report`` (the ``report --json`` object, its ``overall`` being the summary), ``channels``,
    ``days`` (conversations per local day by channel), ``weeks`` (per week: first-response
    median and p90, SLA met and breached and the share met, ratings and CSAT), ``tags`` (the
    most frequent, each with its count per week), ``backlog`` (open conversations by age) and,
    for the filter form, ``known_tags`` (the period's tags, most frequent first) and
    ``known_channels`` (the period's channels)."""
    window = Window(since, now, calendar.tz)
    period = await load_period(session, start=window.start, now=now)
    known: Counter[str] = Counter(t for c in period.rows for t in period.tags.get(c.id, []))
    narrowed = period.narrowed(filters)
    return {
        "timezone": str(calendar.tz.key),
        "report": report_of(period, calendar, filters=filters),
        **series(narrowed, calendar, window, top_tags=top_tags),
        "backlog": await backlog(session, now=now, filters=filters),
        "known_tags": sorted(known, key=lambda t: (-known[t], t)),
        "known_channels": sorted({c.channel for c in period.rows}),
    }


async def digest_figures(session: AsyncSession, *, until: datetime, now: datetime,
                         calendar: BusinessCalendar, since: timedelta = timedelta(days=7),
                         top_tags: int = 5) -> dict[str, Any]:
    """The weekly digest's figures: ``report`` (the ``report --json`` object of ``since``
    before ``until``), the period's most frequent ``tags`` and the open ``backlog`` as of
    ``now`` (as :func:`backlog`)."""
    period = await load_period(session, start=until - since, now=until)
    counts: Counter[str] = Counter(t for c in period.rows
                                   for t in dict.fromkeys(period.tags.get(c.id, [])))
    top = sorted(counts, key=lambda t: (-counts[t], t))[:top_tags]
    return {"report": report_of(period, calendar),
            "tags": [{"tag": t, "conversations": counts[t]} for t in top],
            "backlog": await backlog(session, now=now)}
