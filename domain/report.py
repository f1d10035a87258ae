"""Service figures for a period: volume, first-response times and the SLA, per channel and overall.

Response times are business time (the SLA's calendar): a message that came in on Friday evening
and was answered on Monday at 09:30 took 30 minutes, as the customer was promised.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.conversations import iso
from frontdesk.storage.models import Conversation, Event, Message


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _figures(rows: list[Conversation], calendar: BusinessCalendar, now: datetime,
             messages: dict[str, dict[str, int]], channel: str | None,
             escalations: dict[int, int] | None = None) -> dict[str, Any]:
    escalations = escalations or {}
    times = [calendar.elapsed(c.created_at, c.first_responded_at).total_seconds()
             for c in rows if c.first_responded_at is not None]
    resolution = [calendar.elapsed(c.created_at, c.resolved_at).total_seconds()
                  for c in rows if c.status == "resolved" and c.resolved_at is not None]
    ratings = [c.rating for c in rows if c.rating is not None]
    surveyed = sum(1 for c in rows if c.survey_sent_at is not None)
    met = breached = 0
    for c in rows:
        if c.first_response_due_at is None:
            continue
        answered = c.first_responded_at
        if answered is not None and answered <= c.first_response_due_at:
            met += 1
        elif answered is not None or now > c.first_response_due_at:
            breached += 1
    keys = [channel] if channel else list(messages)
    return {
        "conversations": len(rows),
        "resolved": sum(1 for c in rows if c.status == "resolved"),
        "open": sum(1 for c in rows if c.status != "resolved"),
        "answered": len(times),
        "messages_in": sum(messages.get(k, {}).get("in", 0) for k in keys),
        "messages_out": sum(messages.get(k, {}).get("out", 0) for k in keys),
        "first_response_seconds_median": statistics.median(times) if times else None,
        "first_response_seconds_p90": _quantile(times, 0.9),
        "sla_met": met,
        "sla_breached": breached,
        "sla_met_share": round(met / (met + breached), 4) if met + breached else None,
        "resolution_seconds_median": statistics.median(resolution) if resolution else None,
        "resolution_seconds_p90": _quantile(resolution, 0.9),
        "escalated": sum(1 for c in rows if escalations.get(c.id)),
        "escalations": sum(escalations.get(c.id, 0) for c in rows),
        "surveys_sent": surveyed,
        "ratings": len(ratings),
        "csat_average": round(statistics.fmean(ratings), 2) if ratings else None,
        "csat_satisfied_share": round(sum(1 for r in ratings if r >= 4) / len(ratings), 4)
        if ratings else None,
        "csat_response_rate": round(len(ratings) / surveyed, 4) if surveyed else None,
    }


async def build_report(session: AsyncSession, *, since: timedelta, now: datetime,
                       calendar: BusinessCalendar) -> dict[str, Any]:
    start = now - since
    rows = list((await session.execute(
        select(Conversation).where(Conversation.created_at >= start)
    )).scalars().all())
    counts = (await session.execute(
        select(Message.channel, Message.direction, func.count())
        .where(Message.created_at >= start, Message.is_note.is_(False))
        .group_by(Message.channel, Message.direction)
    )).all()
    messages: dict[str, dict[str, int]] = {}
    for channel, direction, n in counts:
        messages.setdefault(channel, {})[direction] = n
    escalations: dict[int, int] = {
        conversation_id: n for conversation_id, n in (await session.execute(
            select(Event.conversation_id, func.count())
            .where(Event.kind == "escalated", Event.conversation_id.in_(
                select(Conversation.id).where(Conversation.created_at >= start)))
            .group_by(Event.conversation_id))).all() if conversation_id is not None}
    channels = sorted({c.channel for c in rows} | set(messages))
    return {
        "since": iso(start), "until": iso(now),
        "overall": _figures(rows, calendar, now, messages, None, escalations),
        "channels": {ch: _figures([c for c in rows if c.channel == ch], calendar, now, messages,
                                  ch, escalations)
                     for ch in channels},
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_report(report: dict[str, Any]) -> str:
    head = (f"{'':10} {'convs':>6} {'in':>6} {'out':>6} {'answered':>8} {'median 1st':>10} "
            f"{'p90 1st':>9} {'SLA met':>8} {'open':>5} {'resolved in':>11} {'escal.':>6} "
            f"{'CSAT':>5} {'replied':>7}")
    lines = [f"frontdesk report {report['since']} .. {report['until']}", head]
    rows = [*report["channels"].items(), ("overall", report["overall"])]
    for name, f in rows:
        share = "-" if f["sla_met_share"] is None else f"{f['sla_met_share'] * 100:.0f}%"
        lines.append(
            f"{name:10} {f['conversations']:>6} {f['messages_in']:>6} {f['messages_out']:>6} "
            f"{f['answered']:>8} {_duration(f['first_response_seconds_median']):>10} "
            f"{_duration(f['first_response_seconds_p90']):>9} {share:>8} {f['open']:>5} "
            f"{_duration(f['resolution_seconds_median']):>11} {f['escalations']:>6} "
            f"{'-' if f['csat_average'] is None else format(f['csat_average'], '.1f'):>5} "
            f"{_percent(f['csat_response_rate']):>7}")
    return "\n".join(lines)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


CSV_FIELDS = (
    "conversations", "resolved", "open", "answered", "messages_in", "messages_out",
    "first_response_seconds_median", "first_response_seconds_p90", "sla_met", "sla_breached",
    "sla_met_share", "resolution_seconds_median", "resolution_seconds_p90", "escalated",
    "escalations", "surveys_sent", "ratings", "csat_average", "csat_satisfied_share",
    "csat_response_rate",
)


def report_csv(report: dict[str, Any]) -> str:
    """The report as CSV: one row per channel and one ``overall``, with the period on each."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["scope", "since", "until", *CSV_FIELDS])
    for scope, figures in [*report["channels"].items(), ("overall", report["overall"])]:
        writer.writerow([scope, report["since"], report["until"],
                         *("" if figures.get(k) is None else figures[k] for k in CSV_FIELDS)])
    return out.getvalue()
