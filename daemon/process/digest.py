"""The weekly digest: the last 7 days' figures posted in a Slack channel once a week.

``[digest] channel`` names the Slack channel (its id), ``day`` and ``time`` when, in
``sla.timezone``. With the Slack desk configured, at that moment each week the digest's text is
worded from :func:`frontdesk.domain.dashboard.digest_figures` (conversations, first-response
median and p90, SLA met share, CSAT, top tags, open backlog) and queued as one outbox row of kind
:data:`KIND`, which the outbox hands to the desk's ``post_to_channel``: retried with backoff like
every Slack post, across restarts.

Once a week, with several instances too: the row's idempotency key names the ISO week of the
scheduled moment (``digest-2026-W48``) and is inserted with ``ON CONFLICT DO NOTHING`` in the
transaction that also writes the audit event :data:`EVENT` (``digest_queued``, with the week):
whichever instance inserts first queues it, the others (and a restart) find the key and do
nothing. A daemon that was down at the moment queues the digest when it starts, up to
:data:`GRACE` late; a later start leaves that week out (one log line) and waits for the next.

Without ``[digest] channel`` nothing is queued and the only trace is one line at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, time, timedelta
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.channels.base import OutboxHandler, PermanentFailure
from frontdesk.config.schema import CoreSettings
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.dashboard import digest_figures
from frontdesk.domain.messages import Receipt
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Backoff, Store
from frontdesk.storage.models import Event, Outbox, core_table

log = logging.getLogger(__name__)

KIND = "digest_post"
"""Outbox kind of a weekly digest (a post in a Slack channel, outside any thread)."""
EVENT = "digest_queued"
"""The audit event written with the digest's outbox row; ``data["week"]`` is its ISO week."""
GRACE = timedelta(days=1)
"""How late (a daemon down at the moment) a week's digest is still queued."""
LOOK_EVERY = 300.0
"""Seconds between looks at the clock at most (the next moment wakes it otherwise)."""


class ChannelPoster(Protocol):
    """What the digest needs of the Slack desk."""

    async def post_to_channel(self, channel_id: str, text: str) -> Receipt: ...


class _Sla(Protocol):
    @property
    def calendar(self) -> BusinessCalendar: ...


class _Outbox(Protocol):
    def kick(self) -> None: ...


class DigestHost(Protocol):
    """The parts of the daemon the digest uses."""

    @property
    def settings(self) -> CoreSettings: ...

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def sla(self) -> _Sla: ...

    @property
    def desk(self) -> Any: ...

    @property
    def outbox(self) -> _Outbox: ...

    @property
    def outbox_handlers(self) -> dict[str, OutboxHandler]: ...


def week_key(moment: datetime, calendar: BusinessCalendar) -> str:
    """``"2026-W48"``: the ISO week of ``moment``'s local date."""
    year, week, _ = moment.astimezone(calendar.tz).isocalendar()
    return f"{year}-W{week:02d}"


def _slack(text: str) -> str:
    """Text safe in Slack mrkdwn (``&``, ``<``, ``>`` escaped)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m" if s >= 60 else f"{s}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def digest_text(figures: dict[str, Any], *, start: datetime, until: datetime,
                calendar: BusinessCalendar, public_url: str = "") -> str:
    """The digest as Slack mrkdwn, from :func:`frontdesk.domain.dashboard.digest_figures`."""
    tz = calendar.tz
    f = figures["report"]["overall"]
    first, last = start.astimezone(tz), until.astimezone(tz)
    lines = [f"*frontdesk weekly digest* · {first:%d %b} – {last:%d %b %Y} ({tz.key})"]
    lines.append(f"• Conversations: *{f['conversations']}* ({f['resolved']} resolved, "
                 f"{f['open']} not yet) · messages {f['messages_in']} in, "
                 f"{f['messages_out']} out")
    lines.append(f"• First response: median *{_duration(f['first_response_seconds_median'])}*, "
                 f"p90 {_duration(f['first_response_seconds_p90'])} (business time, "
                 f"{f['answered']} answered)")
    if f["sla_met_share"] is None:
        lines.append("• SLA met: –")
    else:
        lines.append(f"• SLA met: *{f['sla_met_share'] * 100:.0f}%* ({f['sla_met']} of "
                     f"{f['sla_met'] + f['sla_breached']})")
    if f["csat_average"] is None:
        lines.append("• CSAT: no ratings")
    else:
        lines.append(f"• CSAT: *{f['csat_average']:.1f}* from {f['ratings']} rating"
                     f"{'s' if f['ratings'] != 1 else ''}")
    tags = ", ".join(f"{_slack(t['tag'])} {t['conversations']}" for t in figures["tags"])
    lines.append(f"• Top tags: {tags or '–'}")
    backlog = figures["backlog"]
    total = sum(b["total"] for b in backlog)
    older = sum(b["total"] for b in backlog if b["bucket"] in ("1–3d", "3–7d", ">7d"))
    lines.append(f"• Open backlog now: *{total}* ({older} older than a day)")
    if public_url:
        lines.append(f"<{_slack(public_url.rstrip('/'))}/dashboard|Open the dashboard>")
    return "\n".join(lines)


class Digest:
    """The daemon service; see the module docstring."""

    name = "digest"
    in_readiness = False  # nothing outside to wait for (Slack is the desk's readiness)

    def __init__(self, daemon: DigestHost) -> None:
        settings = daemon.settings
        self.config = settings.digest
        self.public_url = settings.http.public_url
        self.store = daemon.store
        self.clock = daemon.clock
        self.calendar = daemon.sla.calendar
        self._desk: ChannelPoster | None = daemon.desk
        self._kick_outbox = daemon.outbox.kick
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._skipped: str | None = None  # the week last reported as too late
        # Always the handler: a digest queued before Slack was taken out of the config fails,
        # saying why, instead of waiting for ever.
        daemon.outbox_handlers[KIND] = self.handle

    @property
    def active(self) -> bool:
        return bool(self.config.channel) and self._desk is not None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.config.channel:
            log.info("weekly digest off ([digest] channel is not set)")
            return
        if self._desk is None:
            log.warning("weekly digest off: [digest] channel is set but the Slack desk is not "
                        "configured ([slack])")
            return
        log.info("weekly digest: %ss at %s (%s) in Slack channel %s",
                 self.config.day.capitalize(), self.config.time, self.calendar.tz.key,
                 self.config.channel)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="weekly-digest")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def ready(self) -> bool:
        return True

    async def _run(self) -> None:
        backoff = Backoff("the weekly digest", log)
        while not self._stopping:
            delay = LOOK_EVERY
            try:
                await self.check()
                backoff.succeeded()
                following = self.moment(self.clock()) + timedelta(days=7)
                delay = min(LOOK_EVERY, max(1.0, (following - self.clock()).total_seconds()))
            except Exception as exc:  # noqa: BLE001 - logged by the backoff, tried again
                delay = backoff.failed(exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # -- the week's digest -----------------------------------------------------------------------

    def moment(self, now: datetime) -> datetime:
        """The latest scheduled moment at or before ``now`` (``day`` at ``time``, local)."""
        tz = self.calendar.tz
        local = now.astimezone(tz)
        hour, minute = self.config.hour_minute
        day = local.date() - timedelta(days=(local.weekday() - self.config.weekday) % 7)
        at = datetime.combine(day, time(hour, minute), tzinfo=tz)
        if at > now:
            at = datetime.combine(day - timedelta(days=7), time(hour, minute), tzinfo=tz)
        return at

    async def check(self) -> str | None:
        """Queue this week's digest if its moment has come and nobody queued it yet; the ISO
        week queued now, else None. Tests call it after moving the clock."""
        if not self.active:
            return None
        now = self.clock()
        moment = self.moment(now)
        week = week_key(moment, self.calendar)
        if now - moment > GRACE:
            if self._skipped != week and not await self._queued(week):
                log.info("weekly digest: %s's (due %s) is more than %s late; waiting for next "
                         "week's", week, moment.isoformat(timespec="minutes"), GRACE)
            self._skipped = week
            return None
        if await self._queued(week):
            return None
        async with self.store.reader() as s:
            figures = await digest_figures(s, until=moment, now=now, calendar=self.calendar)
        text = digest_text(figures, start=moment - timedelta(days=7), until=moment,
                           calendar=self.calendar, public_url=self.public_url)
        async with self.store.session() as s:
            queued = await self._queue(s, week, text, now)
        if queued:
            log.info("weekly digest %s queued for Slack channel %s", week, self.config.channel)
            self._kick_outbox()
            return week
        return None

    def _key(self, week: str) -> str:
        return f"digest-{week}"

    async def _queued(self, week: str) -> bool:
        async with self.store.reader() as s:
            found = await s.scalar(select(Outbox.id).where(
                Outbox.idempotency_key == self._key(week)))
        return found is not None

    async def _queue(self, s: AsyncSession, week: str, text: str, now: datetime) -> bool:
        """The outbox row and its audit event, in ``s``'s transaction; False when the week's
        key is already there (another instance, or an earlier run)."""
        channel = self.config.channel
        insert = sqlite.insert if self.store.dialect == "sqlite" else postgresql.insert
        row = {"kind": KIND, "conversation_id": None, "message_id": None,
               "payload": {"slack_channel": channel, "target": channel, "text": text,
                           "week": week},
               "idempotency_key": self._key(week), "state": "pending", "attempts": 0,
               "next_attempt_at": now, "last_error": None, "created_at": now, "done_at": None}
        inserted = (await s.execute(
            insert(core_table(Outbox)).values(**row)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(core_table(Outbox).c.id))).scalar()
        if inserted is None:
            return False
        s.add(Event(kind=EVENT, actor="digest", created_at=now,
                    data={"week": week, "slack_channel": channel, "outbox_id": inserted}))
        return True

    async def handle(self, row: Outbox) -> Receipt:
        """The outbox handler of :data:`KIND`: the desk posts the digest."""
        if self._desk is None:
            raise PermanentFailure("the Slack desk is not configured (slack.bot_token)")
        payload = row.payload or {}
        return await self._desk.post_to_channel(str(payload["slack_channel"]),
                                                str(payload["text"]))
