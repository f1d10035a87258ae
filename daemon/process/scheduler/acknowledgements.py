"""Acknowledgements: the honest first answer to a new conversation ("got it, reference FD-12,
expect a reply by 14:30").

A new conversation from a customer is acknowledged ``acknowledgement.delay`` after it arrives,
once, unless by then staff answered, it was resolved, the first message was automated, the
channel cannot take it (not enabled, an opted-out number), the sender failed authentication
(a trusted upstream's DMARC or SPF ``fail``: a forged sender), or a rate limit is reached: one of
the recipient's (``acknowledgement.rate_limits``, "10/10m"; a mail loop is what they are for) or
one of all acknowledgements together (``acknowledgement.global_rate_limits``: forged senders
spread over many addresses). The promised time is the due time of the response clock.

No backscatter: an acknowledgement to a sender address nobody verified (email without a trusted
``Authentication-Results`` pass, see :data:`~frontdesk.domain.messages.SENDER_CHECK`) repeats
none of the sender's words: a neutral greeting, "your message" for their subject, no display
name. Anyone can put a stranger's address in From; that stranger then gets only our own words.

On PostgreSQL the decision is taken under the recipient's transaction advisory lock
(:data:`ACK_LOCK_KEYS`), so the limits hold when several instances acknowledge one customer at
once; an instance that finds the lock taken tries again a moment later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import AcknowledgementConfig, parse_duration
from frontdesk.daemon.process.scheduler.audit import audit
from frontdesk.daemon.process.scheduler.customers import CustomerNotices
from frontdesk.domain import notices
from frontdesk.domain.conversations import iso
from frontdesk.domain.messages import SENDER_CHECK
from frontdesk.domain.replies import earlier_ids
from frontdesk.domain.sla import SlaEngine, SlaState
from frontdesk.storage.models import Acknowledgement, Contact, Conversation, Message

log = logging.getLogger(__name__)

ACK_LOCK_KEYS = "hashtext('frontdesk.acknowledgement'), hashtext(:recipient)"
"""The two keys of a recipient's transaction advisory lock (PostgreSQL), held while an
acknowledgement to them is decided and written (``:recipient`` lower-cased)."""
_LOCK_EACH = text(
    "SELECT r, pg_try_advisory_xact_lock({}) FROM unnest(CAST(:recipients AS text[])) AS r"
    .format(ACK_LOCK_KEYS.replace(":recipient", "r")))
"""Each of ``:recipients`` (lower-cased) with whether its lock was taken (PostgreSQL)."""
_BUSY_RETRY = timedelta(seconds=1)


class RateLimit(NamedTuple):
    """At most ``most`` acknowledgements to one recipient within ``window``."""

    most: int
    window: timedelta
    spec: str


def parse_rate_limits(specs: Iterable[str]) -> list[RateLimit]:
    """``["10/10m", ...]`` → ``[(10, 10 minutes, "10/10m"), ...]``."""
    out = []
    for spec in specs:
        count, _, window = spec.partition("/")
        out.append(RateLimit(int(count), parse_duration(window), spec))
    return out


class Acknowledgements:
    """Plans and sends acknowledgements; see the module docstring."""

    def __init__(self, config: AcknowledgementConfig, *, engine: SlaEngine,
                 customers: CustomerNotices, dialect: str) -> None:
        self.config = config
        self.engine = engine
        self.customers = customers
        self.dialect = dialect
        self.rate_limits = parse_rate_limits(config.rate_limits)
        self.global_rate_limits = parse_rate_limits(config.global_rate_limits)
        self._known: _Known | None = None

    async def prepare(self, s: AsyncSession, conversations: Sequence[Conversation],
                      now: datetime) -> None:
        """A sweep's batch is about to be acknowledged: read what the decisions need for all of
        it at once (each conversation's first message, the acknowledgements already sent, and
        what the rate limits count), instead of several queries for each. :meth:`finish`
        forgets it.

        On PostgreSQL each recipient's lock is taken here first, for the whole batch, and what
        the rate limits count is read under it; the global limits count what was committed
        when the batch began (plus the batch's own), as on SQLite."""
        ids = [c.id for c in conversations]
        known = _Known()
        if ids:
            ranked = (select(Message.id, func.row_number().over(
                          partition_by=Message.conversation_id, order_by=Message.id).label("n"))
                      .where(Message.conversation_id.in_(ids), Message.direction == "in",
                             Message.author == "customer").subquery())
            known.firsts = {m.conversation_id: m for m in (await s.execute(
                select(Message).join(ranked, ranked.c.id == Message.id)
                .where(ranked.c.n == 1))).scalars()}
            known.earlier = await earlier_ids(s, ids)
            known.acknowledged = set((await s.execute(
                select(Acknowledgement.conversation_id)
                .where(Acknowledgement.conversation_id.in_(ids)))).scalars())
        known.ids = set(ids)
        recipients = {m.address.lower() for m in known.firsts.values()}
        if self.dialect == "postgresql" and self.rate_limits and recipients:
            # Every recipient's lock at once, before their acknowledgements are counted (the
            # counts below are read under the locks taken); one held by another instance
            # postpones that recipient's conversations (acknowledge).
            known.locked = {recipient for recipient, taken in (await s.execute(
                _LOCK_EACH, {"recipients": sorted(recipients)})).all() if taken}
            recipients &= known.locked
        if self.rate_limits:
            longest = max(limit.window for limit in self.rate_limits)
            known.recent = {}
            for recipient, at in (await s.execute(
                    select(Acknowledgement.recipient, Acknowledgement.created_at)
                    .where(Acknowledgement.recipient.in_(recipients),
                           Acknowledgement.created_at > now - longest))).all():
                known.recent.setdefault(recipient, []).append(at)
        if self.global_rate_limits:
            # counted by the store (an index range each), not read: a burst's thousands of
            # acknowledgements were read again by every sweep
            known.everyone = {}
            for limit in self.global_rate_limits:
                known.everyone[limit.spec] = (await s.execute(
                    select(func.count()).select_from(Acknowledgement)
                    .where(Acknowledgement.created_at > now - limit.window))).scalar_one()
        self._known = known

    async def settle(self, s: AsyncSession) -> None:
        """After the batch's decisions: one flush gives its acknowledgements their ids, then
        their outbox rows and audit events are added (see :meth:`ReplyComposer.queue`)."""
        if self._known is None or not self._known.after_flush:
            return
        steps, self._known.after_flush = self._known.after_flush, []
        await s.flush()
        for step in steps:
            step()

    def finish(self) -> None:
        self._known = None

    async def _first(self, s: AsyncSession, c: Conversation) -> Message | None:
        if self._known is not None and c.id in self._known.ids:
            return self._known.firsts.get(c.id)
        return (await s.execute(
            select(Message).where(Message.conversation_id == c.id, Message.direction == "in",
                                  Message.author == "customer")
            .order_by(Message.id).limit(1))).scalars().first()

    async def _acknowledged(self, s: AsyncSession, c: Conversation) -> bool:
        if self._known is not None and c.id in self._known.ids:
            return c.id in self._known.acknowledged
        return (await s.execute(select(Acknowledgement.id)
                                .where(Acknowledgement.conversation_id == c.id))).first() \
            is not None

    def _earlier(self, c: Conversation) -> dict[str, list[str]] | None:
        """The conversation's remote ids by channel, when the batch read them (else None: the
        reply composer reads them itself)."""
        if self._known is not None and c.id in self._known.ids:
            return self._known.earlier.get(c.id, {})
        return None

    def plan(self, c: Conversation, now: datetime) -> None:
        """A new conversation from a customer: acknowledge it after ``acknowledgement.delay``."""
        if self.config.enabled:
            c.ack_due_at = now + self.config.delay

    async def acknowledge(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                          state: SlaState, now: datetime) -> bool:
        """Send the acknowledgement now, or audit why not; True if it was sent. When another
        instance holds the recipient's lock, ``ack_due_at`` is set a moment later instead."""
        first = await self._first(s, c)
        reason = None
        if not self.config.enabled:
            reason = "acknowledgements are disabled"
        elif first is None:
            reason = "there is no customer message"
        elif first.automated:
            reason = "the message was automated"
        elif _sender_check(first) == "fail":
            reason = ("the sender failed authentication (DMARC or SPF, per the trusted "
                      "Authentication-Results): the From address is likely forged")
        elif c.first_responded_at is not None or c.last_staff_message_at is not None:
            reason = "staff already answered"
        elif c.status == "resolved":
            reason = "the conversation is already resolved"
        elif await self._acknowledged(s, c):
            reason = "it was already acknowledged"
        else:
            reason = await self.customers.refusal(
                    s, self.customers.replies.channel_for(c, first), first.address)
            if reason is None:
                if not await self._recipient_lock(s, first.address):
                    c.ack_due_at = now + _BUSY_RETRY  # another instance acknowledges them
                    log.debug("%s: acknowledgement postponed: another instance is "
                              "acknowledging %s", c.reference, first.address)
                    return False
                reason = (await self._rate_limited(s, first.address, now)
                          or await self._globally_limited(s, now))
        if reason is not None or first is None:
            audit(s, "acknowledgement_skipped", c, now, {"reason": reason})
            log.info("%s: no acknowledgement: %s", c.reference, reason)
            return False
        response = state.clocks.get("response")
        due = (response.due if response is not None else None) or c.first_response_due_at \
            or self.engine.calendar.add(now, self.engine.policies.default.first_response)
        language = self.customers.language(contact, first)
        sentence, when = notices.expectation(due, now, self.engine.calendar, language)
        # In a batch (prepare), the message's id comes with the batch's one flush (settle).
        later = self._known.after_flush if self._known is not None and c.id in self._known.ids \
            else None
        message = await self.customers.send(
            s, c, contact, first, kind="acknowledgement", author_name="Automatic reply",
            templates=self.config.templates, now=now, language=language,
            values={"due": when, "expectation": sentence},
            data={"due": iso(due), "language": language},
            neutral=_sender_check(first) == "unverified", earlier=self._earlier(c),
            after_flush=later)
        # Added now, so that the batch's later decisions count it (``recent``; outside a batch,
        # from the session, unflushed: _unflushed).
        sent = Acknowledgement(conversation_id=c.id, message_id=message.id, channel=c.channel,
                               recipient=first.address.lower(), created_at=now)
        s.add(sent)
        if later is not None:
            later.append(lambda: setattr(sent, "message_id", message.id))
        if self._known is not None:  # the batch's later decisions count this one
            self._known.acknowledged.add(c.id)
            if self._known.recent is not None:
                self._known.recent.setdefault(first.address.lower(), []).append(now)
            self._known.added += 1
        return True

    async def _recipient_lock(self, s: AsyncSession, address: str) -> bool:
        """PostgreSQL: take the recipient's acknowledgement lock until the transaction ends;
        False when another instance holds it. Two instances acknowledging two conversations of
        one recipient at once would each count only the acknowledgements committed before, and
        together pass a rate limit."""
        if self.dialect != "postgresql" or not self.rate_limits:
            return True
        if self._known is not None and self._known.locked is not None:
            return address.lower() in self._known.locked  # taken for the batch (prepare)
        with s.no_autoflush:  # the batch's messages wait for its one flush (settle)
            taken = (await s.execute(
                text(f"SELECT pg_try_advisory_xact_lock({ACK_LOCK_KEYS})"),
                {"recipient": address.lower()})).scalar()
        return bool(taken)

    async def _rate_limited(self, s: AsyncSession, address: str, now: datetime) -> str | None:
        if not self.rate_limits:
            return None
        if self._known is not None and self._known.recent is not None:
            sent = self._known.recent.get(address.lower(), [])
        else:
            longest = max(limit.window for limit in self.rate_limits)
            with s.no_autoflush:  # what is not flushed yet is counted from the session
                sent = list((await s.execute(
                    select(Acknowledgement.created_at)
                    .where(Acknowledgement.recipient == address.lower(),
                           Acknowledgement.created_at > now - longest))).scalars())
            sent += _unflushed(s, address.lower())
        for most, window, spec in self.rate_limits:
            if sum(1 for t in sent if t > now - window) >= most:
                return f"the rate limit {spec} for {address} is reached"
        return None

    async def _globally_limited(self, s: AsyncSession, now: datetime) -> str | None:
        for most, window, spec in self.global_rate_limits:
            if self._known is not None and self._known.everyone is not None:
                # the batch's own acknowledgements are all at "now", within every window
                sent = self._known.everyone[spec] + self._known.added
            else:
                with s.no_autoflush:  # what is not flushed yet is counted from the session
                    sent = (await s.execute(
                        select(func.count()).select_from(Acknowledgement)
                        .where(Acknowledgement.created_at > now - window))).scalar_one()
                sent += sum(1 for t in _unflushed(s) if t > now - window)
            if sent >= most:
                return (f"the global rate limit {spec} for all acknowledgements is reached "
                        "(acknowledgement.global_rate_limits)")
        return None


@dataclass
class _Known:
    """What :meth:`Acknowledgements.prepare` read for a batch."""

    ids: set[int] = field(default_factory=set)
    firsts: dict[int, Message] = field(default_factory=dict)
    acknowledged: set[int] = field(default_factory=set)
    earlier: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    """Each conversation's remote ids by channel (:func:`earlier_ids`)."""
    recent: dict[str, list[datetime]] | None = None
    """Each recipient's acknowledgements within the longest rate-limit window (on PostgreSQL,
    of the recipients whose lock the batch holds)."""
    locked: set[str] | None = None
    """PostgreSQL: the recipients whose acknowledgement lock the batch took (the others' are
    held by another instance)."""
    after_flush: list[Callable[[], None]] = field(default_factory=list)
    """What waits for the batch's flush: the outbox rows and audit events of its
    acknowledgements, which name their messages' ids (:meth:`Acknowledgements.settle`)."""
    everyone: dict[str, int] | None = None
    """For each global rate limit (by its spec), the acknowledgements within its window when
    the batch began."""
    added: int = 0
    """Acknowledgements this batch made so far (counted with ``everyone``)."""


def _unflushed(s: AsyncSession, recipient: str | None = None) -> list[datetime]:
    """The times of the acknowledgements added to the session and not flushed yet (to
    ``recipient``, or to anyone): a count of the store read without flushing first misses
    them. Reading without a flush lets a batch write its acknowledgements with one flush."""
    return [a.created_at for a in s.new if isinstance(a, Acknowledgement)
            and (recipient is None or a.recipient == recipient)]


def _sender_check(message: Message) -> str | None:
    value = (message.headers or {}).get(SENDER_CHECK)
    return value if isinstance(value, str) else None
