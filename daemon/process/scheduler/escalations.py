"""SLA warnings and escalation levels, and the notices they send.

Each running SLA clock of a conversation (first or next response, resolution) passes, in business
time, its warning (``sla.warn_before`` its due time: a line in the Slack thread) and then each
``[[escalation]]`` level (``after`` past the due time). A level notifies where its ``notify`` says
(the conversation's Slack thread, a managers' Slack channel, a person on call by email or SMS)
and may raise the conversation's priority, which can bring a stricter SLA policy and so more
levels in the same sweep. Every notice carries an idempotency key
``esc:<conversation>:<clock>:<stage>:<due>:<target>``: it fires once per due time, across
restarts and instances. Each warning and level is also audited (``sla_warning``, ``escalated``:
what was notified, what was skipped and why).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Set
from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import EscalationLevel, SlaConfig
from frontdesk.daemon.desk.blocks import escape
from frontdesk.daemon.process.scheduler.audit import ACTOR, audit
from frontdesk.daemon.process.scheduler.rows import OutboxRows
from frontdesk.daemon.process.scheduler.staff import StaffNotices
from frontdesk.daemon.process.scheduler.wording import slack_mention, span, with_mention
from frontdesk.domain.conversations import PRIORITIES, iso, set_priority
from frontdesk.domain.messages import OutboundMessage
from frontdesk.domain.sla import KIND_WORDS, SlaClock, SlaEngine, SlaState, next_stage
from frontdesk.storage.models import Contact, Conversation

log = logging.getLogger(__name__)


class Escalations:
    """Fires the warnings and levels that are due; see the module docstring."""

    def __init__(self, sla: SlaConfig, *, engine: SlaEngine, staff: StaffNotices,
                 channel_names: Set[str]) -> None:
        self.sla = sla
        self.engine = engine
        self.calendar = engine.calendar
        self.staff = staff
        self.channel_names = channel_names

    async def escalate(self, s: AsyncSession, c: Conversation, state: SlaState, now: datetime,
                       tally: Tally[str], rows: OutboxRows) -> bool:
        """Fire every warning and level that is due on the running clocks, in order (a warning
        whose breach has already passed is skipped); True if a level raised the priority."""
        raised = False
        changed = False
        levels = self.engine.levels
        for clock in state.clocks.values():
            while True:
                stage = next_stage(clock, levels, self.sla.warn_before)
                if stage is None:
                    break
                when = clock.at(stage.position, self.calendar)
                if when is None or when > now or clock.due is None:
                    break
                changed = True
                if stage.name == "warning":
                    clock.warned = True
                    if clock.used(now, self.calendar) >= clock.target:
                        continue  # already past the due time: the first level says it
                    await self._warn(s, c, clock, now)
                    tally["warning"] += 1
                else:
                    clock.level = stage.level
                    clock.warned = True
                    if await self._level(s, c, clock, stage.level, levels[stage.level - 1], now,
                                         rows):
                        raised = True
                    tally["escalation"] += 1
        if changed:
            c.sla_state = state.dump()
            c.escalation_level = max((k.level for k in state.clocks.values()), default=0)
            c.escalation_due_at = self.engine.next_escalation(state)
        return raised

    def _local(self, at: datetime) -> str:
        local = at.astimezone(self.calendar.tz)
        return f"{local:%a %d %b %H:%M} {local.tzname() or ''}".strip()

    async def _warn(self, s: AsyncSession, c: Conversation, clock: SlaClock,
                    now: datetime) -> None:
        assert clock.due is not None
        what = KIND_WORDS[clock.kind]
        left = timedelta(seconds=clock.target - clock.used(now, self.calendar))
        text = (f"SLA warning: the {what} for {c.reference} is due {self._local(clock.due)} "
                f"({span(left)} of business time left).")
        key = f"esc:{c.id}:{clock.kind}:warning:{clock.due.isoformat()}"
        posted = await self.staff.in_thread(
            s, c, with_mention(text, slack_mention(self.sla.warn_mention)), now,
            key=f"{key}:slack")
        audit(s, "sla_warning", c, now,
              {"clock": clock.kind, "due": iso(clock.due), "posted": posted})
        log.info("%s: SLA warning (%s due %s)", c.reference, what, iso(clock.due))

    async def _level(self, s: AsyncSession, c: Conversation, clock: SlaClock, number: int,
                     level: EscalationLevel, now: datetime, rows: OutboxRows) -> bool:
        """One escalation level: its notices (each once, by key) and its priority raise."""
        assert clock.due is not None
        what = KIND_WORDS[clock.kind]
        overdue = timedelta(seconds=max(0.0, clock.used(now, self.calendar) - clock.target))
        head = f"Escalation level {number}"
        detail = (f"the {what} for {c.reference} was due {self._local(clock.due)}"
                  f" ({span(overdue)} of business time overdue)")
        mention = slack_mention(level.mention)
        key = f"esc:{c.id}:{clock.kind}:{number}:{clock.due.isoformat()}"
        notified: list[str] = []
        skipped: list[str] = []
        for target in level.notify:
            if target == "slack":
                sent = await self.staff.in_thread(
                    s, c, with_mention(f"{head}: {detail}.", mention), now, key=f"{key}:slack")
                done, why = "slack thread", "slack thread: the Slack desk is not configured"
            elif target == "channel":
                contact = await s.get(Contact, c.contact_id)
                who = escape((contact.name if contact else "") or "customer")
                text = (f"{head}: {detail}. {c.channel} conversation with {who}: "
                        f"{escape(c.subject[:200]) or '(no subject)'}")
                sent = self.staff.in_channel(rows, level.channel_id, with_mention(text, mention),
                                             conversation_id=c.id, key=f"{key}:channel", now=now)
                done = f"slack {level.channel_id}"
                why = f"{done}: the Slack desk is not configured"
            elif target == "email":
                subject = f"[{c.reference}] {head}: {what} overdue"
                body = (f"{head}: {detail}.\n\nConversation: {c.reference} ({c.channel}), "
                        f"priority {c.priority}, status {c.status}\nSubject: {c.subject}\n\n"
                        f"See it with: frontdesk show {c.reference}\n")
                sent = self._oncall(rows, "email", level.email, body, key, now, subject=subject)
                done, why = f"email {level.email}", "email: the email channel is not enabled"
            else:  # "sms"
                body = f"frontdesk {head.lower()}: {c.reference} {what} overdue " \
                       f"(due {self._local(clock.due)})."
                sent = self._oncall(rows, "sms", level.sms, body, key, now)
                done, why = f"sms {level.sms}", "sms: the sms channel is not enabled"
            if sent:
                notified.append(done)
            else:
                skipped.append(why)
        raised_to = await self._raise_priority(s, c, level, number, now)
        audit(s, "escalated", c, now,
              {"level": number, "clock": clock.kind, "due": iso(clock.due),
               "notified": notified, "skipped": skipped,
               **({"priority": raised_to} if raised_to else {})})
        for line in skipped:
            log.warning("%s %s: %s not sent", c.reference, head.lower(), line)
        log.info("%s: %s (%s due %s) to %s", c.reference, head.lower(), what, iso(clock.due),
                 ", ".join(notified) or "nobody")
        return raised_to is not None

    async def _raise_priority(self, s: AsyncSession, c: Conversation, level: EscalationLevel,
                              number: int, now: datetime) -> str | None:
        if level.raise_priority is False:
            return None
        current = PRIORITIES.index(c.priority) if c.priority in PRIORITIES else 1
        if level.raise_priority is True:
            wanted = PRIORITIES[min(current + 1, len(PRIORITIES) - 1)]
        else:
            wanted = str(level.raise_priority)
        if PRIORITIES.index(wanted) <= current:
            return None
        await set_priority(s, c, wanted, actor=ACTOR, now=now,
                           data={"reason": f"escalation level {number}"})
        return wanted

    def _oncall(self, rows: OutboxRows, channel: str, address: str, text: str, key: str,
                now: datetime, *, subject: str = "") -> bool:
        """A notice to a person on call, queued with the batch's rows on a customer channel
        (not a customer message: no conversation order); False when the channel is not
        enabled."""
        if channel not in self.channel_names:
            return False
        full_key = f"{key}:{channel}"
        out = OutboundMessage(channel=channel, to_address=address, text=text, subject=subject,
                              automated=True, idempotency_key=full_key)
        rows.add(kind="deliver", payload=asdict(out), key=full_key, now=now)
        return True
