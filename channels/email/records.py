"""The email channel's store-side half: what a bounce does to the reply it is about.

Plugged into the ingest transaction by :meth:`EmailChannel.attach` as an inbound filter: a bounce
(an :class:`InboundMessage` with a ``delivery_report``) marks each outbound email it names as
``failed`` with the report's reason, in the same transaction that stores the bounce itself (it
is kept in the conversation as an automated message, and reopens nothing). A delay warning
only adds an audit event, and so does a bounce that names only addresses the reply copied (CC):
the customer's own copy went out (``cc_bounced``).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain.messages import InboundMessage
from frontdesk.storage.models import Event, Message

log = logging.getLogger(__name__)


async def apply_delivery_report(session: AsyncSession, m: InboundMessage, journal_id: int,
                                now: datetime) -> bool:
    """Mark the outbound mail a bounce names as failed. Never takes the bounce itself (False):
    it is stored like any automated mail."""
    report = m.delivery_report
    if report is None or not report.original_ids:
        return False
    ours = (await session.execute(
        select(Message).where(Message.channel == "email", Message.direction == "out",
                              Message.external_id.in_(list(report.original_ids)))
        .order_by(Message.id)
    )).scalars().all()
    for message in ours:
        data = {"reason": report.reason, "recipients": list(report.recipients),
                "journal_id": journal_id, "source": "bounce"}
        if not report.failed:
            session.add(Event(kind="delivery_delayed", actor="mail server",
                              conversation_id=message.conversation_id, message_id=message.id,
                              created_at=now, data=data))
            continue
        named = {r.strip().strip("<>").lower() for r in report.recipients}
        if named and message.address and message.address.lower() not in named:
            # Only copies (CC) bounced: the customer's mail went out; audited, not failed.
            session.add(Event(kind="cc_bounced", actor="mail server",
                              conversation_id=message.conversation_id, message_id=message.id,
                              created_at=now, data=data))
            continue
        if message.delivery_status == "failed" and message.failure_reason == report.reason:
            continue  # the same bounce again
        message.delivery_status = "failed"
        message.failure_reason = report.reason
        session.add(Event(kind="delivery_failed", actor="mail server",
                          conversation_id=message.conversation_id, message_id=message.id,
                          created_at=now, data=data))
        log.info("message #%d bounced: %s", message.id, report.reason)
    return False
