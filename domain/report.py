"""Service figures for a period: volume, first-response times and the SLA, per channel and overall.

Response times are business time (the SLA's calendar): a message that came in on Friday evening
and was answered on Monday at 09:30 took 30 minutes, as the customer was promised.

The period holds the conversations that began in it (``since`` before ``now``, up to ``now``) and
the messages written in it. A report can be narrowed to one customer channel or one conversation
tag (:class:`Filters`), and grouped ``by`` channel, tag or agent (:data:`GROUPINGS`):

* ``channel``: the same figures as the ``channels`` object (messages by the channel they went on);
* ``tag``: a conversation with two tags counts in both groups; the group with key ``None`` (JSON
  ``null``) holds the conversations without a tag;
* ``agent``: by ``Conversation.assignee``; key ``None`` holds the unassigned ones.

In a tag or agent group, ``messages_in`` and ``messages_out`` count the period's messages of the
conversations that carry that tag (or assignee) now, whenever those conversations began.
:func:`load_period` and :func:`figures` are shared with the dashboard
(:mod:`frontdesk.domain.dashboard`), so its summary is this report's ``overall``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import noload

from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.conversations import iso
from frontdesk.storage.models import Conversation, Event, Message

Grouping = Literal["channel", "tag", "agent"]
GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)
"""What ``report --by`` groups by."""

NO_KEY_LABEL: dict[str, str] = {"channel": "(none)", "tag": "(no tag)", "agent": "(nobody)"}
"""How text and CSV output name the group whose key is ``None``."""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def figures(rows: list[Conversation], calendar: BusinessCalendar, now: datetime,
            messages: Mapping[str, int], escalations: Mapping[int, int] | None = None
            ) -> dict[str, Any]:
    """The figures (FIGURES in ``report --json``) of the conversations ``rows``, with
    ``messages`` the period's message counts by direction (``{"in": 3, "out": 2}``) and
    ``escalations`` the escalation levels fired per conversation id."""
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
    return {
        "conversations": len(rows),
        "resolved": sum(1 for c in rows if c.status == "resolved"),
        "open": sum(1 for c in rows if c.status != "resolved"),
        "answered": len(times),
        "messages_in": messages.get("in", 0),
        "messages_out": messages.get("out", 0),
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


@dataclass(frozen=True)
class Filters:
    """Narrow a report to one customer channel and/or one conversation tag (None: all)."""

    channel: str | None = None
    tag: str | None = None

    def __bool__(self) -> bool:
        return self.channel is not None or self.tag is not None

    def view(self) -> dict[str, str]:
        return {k: v for k, v in (("channel", self.channel), ("tag", self.tag)) if v is not None}


NO_FILTERS = Filters()
"""Everything: no channel, no tag."""


@dataclass(frozen=True)
class MessageCount:
    """The period's messages of one conversation on one channel in one direction."""

    conversation_id: int
    channel: str
    direction: str
    count: int


@dataclass
class Period:
    """What a report is made of: the conversations that began in ``[start, now]``, the
    period's message counts (with the tags and assignee of each conversation they belong to)
    and the escalation levels fired per conversation."""

    start: datetime
    now: datetime
    rows: list[Conversation]
    messages: list[MessageCount]
    escalations: dict[int, int]
    tags: dict[int, list[str]] = field(default_factory=dict)
    """Conversation id → its tags, for every conversation in ``rows`` or ``messages``."""
    assignees: dict[int, str | None] = field(default_factory=dict)

    def narrowed(self, filters: Filters) -> Period:
        """The period with only what ``filters`` lets through."""
        if not filters:
            return self

        def keep(conversation_id: int, channel: str) -> bool:
            if filters.channel is not None and channel != filters.channel:
                return False
            return filters.tag is None or filters.tag in self.tags.get(conversation_id, ())

        return Period(self.start, self.now, [c for c in self.rows if keep(c.id, c.channel)],
                      [m for m in self.messages if keep(m.conversation_id, m.channel)],
                      self.escalations, self.tags, self.assignees)

    def figures(self, calendar: BusinessCalendar, rows: list[Conversation] | None = None,
                messages: Iterable[MessageCount] | None = None) -> dict[str, Any]:
        """:func:`figures` of ``rows`` and ``messages`` (default: all of the period's)."""
        return figures(self.rows if rows is None else rows, calendar, self.now,
                       by_direction(self.messages if messages is None else messages),
                       self.escalations)


def by_direction(messages: Iterable[MessageCount]) -> dict[str, int]:
    """Message counts by direction: ``{"in": 3, "out": 2}``."""
    out: dict[str, int] = {}
    for m in messages:
        out[m.direction] = out.get(m.direction, 0) + m.count
    return out


def _tags_of(c: Conversation) -> list[str]:
    return [t for t in (c.tags or []) if isinstance(t, str)]


async def load_period(session: AsyncSession, *, start: datetime, now: datetime) -> Period:
    """The conversations that began in ``[start, now]`` (loaded without their contact), the
    period's messages (not internal notes) by conversation, channel and direction, and the
    escalation levels fired on those conversations."""
    rows = list((await session.execute(
        select(Conversation).where(Conversation.created_at >= start,
                                   Conversation.created_at <= now)
        .options(noload(Conversation.contact))  # figures need no contact (nor its identities)
    )).scalars().all())
    in_period = (Message.created_at >= start, Message.created_at <= now,
                 Message.is_note.is_(False))
    messages = [MessageCount(int(cid), str(channel), str(direction), int(n))
                for cid, channel, direction, n in (await session.execute(
                    select(Message.conversation_id, Message.channel, Message.direction,
                           func.count())
                    .where(*in_period)
                    .group_by(Message.conversation_id, Message.channel, Message.direction)
                )).all()]
    escalations: dict[int, int] = {
        conversation_id: n for conversation_id, n in (await session.execute(
            select(Event.conversation_id, func.count())
            .where(Event.kind == "escalated", Event.conversation_id.in_(
                select(Conversation.id).where(Conversation.created_at >= start,
                                              Conversation.created_at <= now)))
            .group_by(Event.conversation_id))).all() if conversation_id is not None}
    tags = {c.id: _tags_of(c) for c in rows}
    assignees = {c.id: c.assignee for c in rows}
    if any(m.conversation_id not in tags for m in messages):  # older conversations written to
        for cid, conversation_tags, assignee in (await session.execute(
                select(Conversation.id, Conversation.tags, Conversation.assignee)
                .where(Conversation.id.in_(select(Message.conversation_id).where(*in_period)),
                       Conversation.created_at < start))).all():
            tags[cid] = [t for t in (conversation_tags or []) if isinstance(t, str)]
            assignees[cid] = assignee
    return Period(start, now, rows, messages, escalations, tags, assignees)


def _groups(period: Period, calendar: BusinessCalendar, by: Grouping) -> list[dict[str, Any]]:
    """One entry per key: ``{"key": ..., **figures}``."""
    members: dict[str | None, list[Conversation]] = {}
    messages: dict[str | None, list[MessageCount]] = {}

    def keys_of(conversation_id: int, channel: str) -> Iterable[str | None]:
        if by == "channel":
            return [channel]
        if by == "tag":
            return period.tags.get(conversation_id) or [None]
        return [period.assignees.get(conversation_id)]

    for c in period.rows:
        for key in keys_of(c.id, c.channel):
            members.setdefault(key, []).append(c)
    for m in period.messages:
        for key in dict.fromkeys(keys_of(m.conversation_id, m.channel)):
            messages.setdefault(key, []).append(m)
    keys = set(members) | set(messages)
    named = [k for k in keys if k is not None]
    ordered: list[str | None] = []
    if by == "channel":
        ordered.extend(sorted(named))
    else:  # the biggest groups first; the group without a key last
        ordered.extend(sorted(named, key=lambda k: (-len(members.get(k, [])), k)))
        if None in keys:
            ordered.append(None)
    return [{"key": key, **period.figures(calendar, members.get(key, []), messages.get(key, []))}
            for key in ordered]


def report_of(period: Period, calendar: BusinessCalendar, *, filters: Filters = NO_FILTERS,
              by: Grouping | None = None) -> dict[str, Any]:
    """The ``report --json`` object of a loaded period (see :func:`build_report`)."""
    period = period.narrowed(filters)
    out: dict[str, Any] = {"since": iso(period.start), "until": iso(period.now)}
    if filters:
        out["filters"] = filters.view()
    if by is not None:
        out["by"] = by
    out["overall"] = period.figures(calendar)
    if by is None:
        channels = sorted({c.channel for c in period.rows} | {m.channel for m in period.messages})
        out["channels"] = {
            ch: period.figures(calendar, [c for c in period.rows if c.channel == ch],
                               [m for m in period.messages if m.channel == ch])
            for ch in channels}
    else:
        out["groups"] = _groups(period, calendar, by)
    return out


async def build_report(session: AsyncSession, *, since: timedelta, now: datetime,
                       calendar: BusinessCalendar, filters: Filters = NO_FILTERS,
                       by: Grouping | None = None) -> dict[str, Any]:
    """``{"since", "until", "overall": FIGURES, "channels": {"email": FIGURES, ...}}``; with
    ``by``, ``{"since", "until", "by", "overall", "groups": [{"key", **FIGURES}, ...]}``
    instead of ``channels``; with filters, ``"filters": {"channel", "tag"}`` too."""
    period = await load_period(session, start=now - since, now=now)
    return report_of(period, calendar, filters=filters, by=by)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _scopes(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The report's rows by name: each channel (or group), then ``overall``."""
    if "groups" in report:
        empty = NO_KEY_LABEL.get(str(report.get("by")), "(none)")
        rows = [(empty if g["key"] is None else str(g["key"]), g) for g in report["groups"]]
    else:
        rows = list(report["channels"].items())
    return [*rows, ("overall", report["overall"])]


def format_report(report: dict[str, Any]) -> str:
    rows = _scopes(report)
    width = max(10, *(len(name) for name, _ in rows))
    head = (f"{'':{width}} {'convs':>6} {'in':>6} {'out':>6} {'answered':>8} {'median 1st':>10} "
            f"{'p90 1st':>9} {'SLA met':>8} {'open':>5} {'resolved in':>11} {'escal.':>6} "
            f"{'CSAT':>5} {'replied':>7}")
    title = f"frontdesk report {report['since']} .. {report['until']}"
    if report.get("filters"):
        title += "".join(f" {k}={v}" for k, v in report["filters"].items())
    if report.get("by"):
        title += f" by {report['by']}"
    lines = [title, head]
    for name, f in rows:
        share = "-" if f["sla_met_share"] is None else f"{f['sla_met_share'] * 100:.0f}%"
        lines.append(
            f"{name:{width}} {f['conversations']:>6} {f['messages_in']:>6} {f['messages_out']:>6} "
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
    """The report as CSV: one row per channel (or group, with ``--by``) and one ``overall``,
    with the period on each."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["scope", "since", "until", *CSV_FIELDS])
    for scope, figures_ in _scopes(report):
        writer.writerow([scope, report["since"], report["until"],
                         *("" if figures_.get(k) is None else figures_[k] for k in CSV_FIELDS)])
    return out.getvalue()
