"""Surveys, reminders and ratings: the follow-ups of a conversation.

* A survey ("how did we do? answer 1 to 5") goes ``survey.delay`` after a conversation that staff
  answered is resolved, once.
* A reminder goes ``reminder.after`` the last staff message of a conversation that waits on the
  customer (pending), once per staff message.
* A rating is a customer message that is just a digit 1-5 within ``survey.window`` of the survey
  (:func:`parse_rating`): stored on the conversation and said in its Slack thread. A good score
  leaves the conversation resolved; a low one (``survey.low_score`` or less) leaves it open for a
  follow-up.

Mail may go at any hour; a text waits until the desk is open.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import ReminderConfig, SurveyConfig
from frontdesk.daemon.process.scheduler.audit import audit
from frontdesk.daemon.process.scheduler.customers import (
    CustomerNotices,
    Templates,
    last_from_customer,
)
from frontdesk.daemon.process.scheduler.staff import StaffNotices
from frontdesk.domain.conversations import iso
from frontdesk.domain.sla import SlaEngine, SlaState
from frontdesk.storage.models import Contact, Conversation, Event, Message

log = logging.getLogger(__name__)

_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5)?\s*[.!]?\s*$")
_SIGNATURE = re.compile(r"\n--\s*\n.*", re.DOTALL)


def parse_rating(text: str) -> int | None:
    """The score of a survey answer that is just a digit 1-5 ("5", " 4. ", "5/5"), else None.
    A signature after a "-- " line is ignored."""
    text = _SIGNATURE.sub("", text.replace("\r\n", "\n"))
    m = _RATING.match(text)
    return int(m.group(1)) if m else None


class FollowUps:
    """Plans and sends surveys and reminders, and takes ratings; see the module docstring."""

    def __init__(self, survey: SurveyConfig, reminder: ReminderConfig, *, engine: SlaEngine,
                 customers: CustomerNotices, staff: StaffNotices) -> None:
        self.survey_config = survey
        self.reminder_config = reminder
        self.engine = engine
        self.customers = customers
        self.staff = staff

    def plan(self, c: Conversation) -> None:
        """Set (or clear) ``survey_due_at`` and ``reminder_due_at``."""
        state = SlaState.load(c.sla_state)
        survey = self.survey_config
        if survey.enabled and c.status == "resolved" and c.survey_sent_at is None \
                and c.first_responded_at is not None and c.resolved_at is not None:
            if c.survey_due_at is None:
                c.survey_due_at = self._send_time(c.channel, c.resolved_at + survey.delay)
        else:
            c.survey_due_at = None
        reminder = self.reminder_config
        last_staff = c.last_staff_message_at
        if reminder.enabled and c.status == "pending" and last_staff is not None \
                and not self.engine.owes_answer(c, state) \
                and state.extra.get("reminded_for") != iso(last_staff):
            c.reminder_due_at = self._send_time(c.channel, last_staff + reminder.after)
        else:
            c.reminder_due_at = None

    def _send_time(self, channel: str, at: datetime) -> datetime:
        """Mail may go at any hour; a text waits until the desk is open."""
        return at if channel == "email" else self.engine.calendar.next_open(at)

    async def survey(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                     now: datetime) -> bool:
        """Send the survey now, or audit why not; True if it was sent."""
        reason = None
        if c.status != "resolved":
            reason = "the conversation is not resolved"
        elif c.survey_sent_at is not None:
            reason = "a survey was already sent"
        sent = await self._send(s, c, contact, now, kind="survey",
                                author_name="Satisfaction survey",
                                templates=self.survey_config.templates, reason=reason)
        if sent:
            c.survey_sent_at = now
            state = SlaState.load(c.sla_state)
            state.extra["resolved_at"] = iso(c.resolved_at)
            c.sla_state = state.dump()
        return sent

    async def remind(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                     now: datetime) -> bool:
        """Send the reminder now, or audit why not; True if it was sent. Either way it is not
        planned again for the same staff message."""
        state = SlaState.load(c.sla_state)
        state.extra["reminded_for"] = iso(c.last_staff_message_at)
        c.sla_state = state.dump()
        reason = None
        if c.status != "pending" or self.engine.owes_answer(c, state):
            reason = "the conversation is not waiting on the customer"
        return await self._send(s, c, contact, now, kind="reminder", author_name="Reminder",
                                templates=self.reminder_config.templates, reason=reason)

    async def _send(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                    now: datetime, *, kind: str, author_name: str, templates: Templates,
                    reason: str | None) -> bool:
        """A follow-up answering the customer's last message, unless ``reason`` (or a reason
        found here) says why not: then ``<kind>_skipped`` is audited."""
        last = await last_from_customer(s, c)
        if reason is None:
            reason = "there is no customer message" if last is None \
                else await self.customers.refusal(
                    s, self.customers.replies.channel_for(c, last), last.address)
        if reason is not None or last is None:
            audit(s, f"{kind}_skipped", c, now, {"reason": reason})
            return False
        await self.customers.send(s, c, contact, last, kind=kind, author_name=author_name,
                                  templates=templates, now=now)
        return True

    async def rating_reply(self, s: AsyncSession, c: Conversation, message: Message,
                           now: datetime) -> bool:
        """A digit 1-5 in answer to the survey: stored as the rating; True if it was one. A good
        score leaves the conversation resolved (undoing the reopen the processor just did); a
        low one (``survey.low_score`` or less) leaves it open for a follow-up."""
        survey = self.survey_config
        if c.survey_sent_at is None or now - c.survey_sent_at > survey.window:
            return False
        text = message.text_new if message.text_new is not None else message.text
        score = parse_rating(text or "")
        if score is None:
            return False
        c.rating, c.rated_at = score, now
        state = SlaState.load(c.sla_state)
        low = score <= survey.low_score
        await s.flush()
        reopened = (await s.execute(
            select(Event).where(Event.message_id == message.id,
                                Event.kind == "conversation_reopened"))).scalars().first()
        if not low:
            state.settled_at = now  # a rating needs no answer
            if reopened is not None:  # resolved it stays: the reopen never happened
                await s.execute(delete(Event).where(Event.id == reopened.id))
                c.status = "resolved"
                resolved_at = state.extra.get("resolved_at")
                c.resolved_at = datetime.fromisoformat(resolved_at) if resolved_at \
                    else c.survey_sent_at
            c.sla_state = state.dump()
        audit(s, "rating_received", c, now,
              {"rating": score, "low": low, "reopened": low and c.status == "open"},
              message_id=message.id, actor="customer")
        line = f"Rating {score}/5 from the customer"
        if low:
            line += (f": {c.reference} is open again for a follow-up" if c.status == "open"
                     else " (low)")
        await self.staff.in_thread(s, c, line + ".", now, key=f"rating-{message.id}")
        log.info("%s rated %d/5%s", c.reference, score, " (low: reopened)" if low else "")
        return True
