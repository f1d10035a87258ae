"""Outgoing webhooks: which audited events become which webhook, queued in the same transaction.

Every change frontdesk audits is an :class:`~frontdesk.storage.models.Event` row written in the
transaction that makes the change. :class:`WebhookEmitter`, installed on a store, watches its
sessions: when a flush writes events of the kinds in :data:`EVENT_TYPES`, it adds one outbox row
(kind ``webhook``) per receiver subscribed to the event's type, flushed with the rest before the
commit. So a webhook is queued exactly when its change commits, whichever part of frontdesk made
it (the daemon, the REST API, the command line), and never for a change rolled back.

Each row is the lane ``webhook:<receiver>`` (``outbox.channel``): the outbox delivers one
receiver's webhooks in order within a conversation, and a receiver that is down holds up only
its own lanes. The row names the event, its time and a ``webhook_id`` (``msg_`` and a random
hex) that every retry repeats; the body is built when it is sent
(:mod:`frontdesk.daemon.process.webhooks`), from the conversation as it is then.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from frontdesk.config.schema import WEBHOOK_EVENTS, WebhookConfig
from frontdesk.domain.conversations import iso
from frontdesk.storage.clock import Clock, utcnow
from frontdesk.storage.models import Event, Outbox

if TYPE_CHECKING:
    from frontdesk.storage.db import Store

log = logging.getLogger(__name__)

KIND = "webhook"
"""``outbox.kind`` of a webhook delivery."""

EVENT_TYPES = {
    "conversation_created": "conversation.created",
    "message_received": "message.received",
    "message_sent": "message.sent",
    "conversation_resolved": "conversation.resolved",
    "sla_warning": "sla.warning",
    "escalated": "sla.escalated",  # each escalation level that fires, whatever its notify
    "rating_received": "rating.received",
}
"""The audit's event kinds (``events.kind``) that are sent as webhooks, and their types."""

assert set(EVENT_TYPES.values()) == set(WEBHOOK_EVENTS)

_PENDING = "frontdesk_webhooks_queued"
"""``Session.info`` key: this transaction queued webhooks (wake the outbox when it commits)."""


def lane(receiver: str) -> str:
    """``outbox.channel`` of a receiver's webhooks (at most 32 characters: names are <= 24)."""
    return f"{KIND}:{receiver}"


def is_message_type(webhook_type: str) -> bool:
    """Whether a webhook of this type carries the message (``data.message``) too."""
    return webhook_type.startswith("message.")


class WebhookEmitter:
    """Queues the webhooks of the audited events a store's sessions write; see the module
    docstring. ``wake`` (the outbox worker's kick) runs after a commit that queued some."""

    def __init__(self, receivers: Sequence[WebhookConfig], *, clock: Clock = utcnow,
                 wake: Callable[[], None] | None = None) -> None:
        self._clock = clock
        self._wake = wake
        self._subscribed: dict[str, list[str]] = {
            webhook_type: [hook.receiver for hook in receivers if webhook_type in hook.events]
            for webhook_type in WEBHOOK_EVENTS}

    def install(self, store: Store) -> None:
        """From now on, every session of ``store`` queues webhooks."""
        store.add_session_listener("after_flush", self._after_flush)
        store.add_session_listener("after_commit", self._after_commit)
        store.add_session_listener("after_soft_rollback", self._after_rollback)

    def rows(self, events: Sequence[Event]) -> list[Outbox]:
        """The outbox rows of ``events`` (stored ones: with ids), in the events' order."""
        now = self._clock()
        rows = []
        for ev in events:
            webhook_type = EVENT_TYPES.get(ev.kind)
            if webhook_type is None or ev.conversation_id is None:
                continue
            at = iso(ev.created_at or now)
            for receiver in self._subscribed[webhook_type]:
                channel = lane(receiver)
                rows.append(Outbox(
                    kind=KIND, conversation_id=ev.conversation_id, message_id=ev.message_id,
                    channel=channel, state="pending", attempts=0, next_attempt_at=now,
                    created_at=now, idempotency_key=f"{channel}:{ev.id}",
                    payload={"channel": channel, "receiver": receiver, "type": webhook_type,
                             "event_id": ev.id, "at": at,
                             "webhook_id": f"msg_{uuid.uuid4().hex}"}))
        return rows

    def _after_flush(self, session: Session, _context: Any) -> None:
        # session.new still holds what this flush inserted, with ids assigned; rows added here
        # are flushed before the commit (SQLAlchemy flushes again until nothing is left).
        events = sorted((obj for obj in session.new
                         if isinstance(obj, Event) and obj.kind in EVENT_TYPES),
                        key=lambda ev: ev.id)
        if not events:
            return
        rows = self.rows(events)
        if rows:
            session.add_all(rows)
            session.info[_PENDING] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_PENDING, False) and self._wake is not None:
            self._wake()

    def _after_rollback(self, session: Session, previous: Any) -> None:
        # A rollback drops the rows it queued: pending ones leave the session with it (and a
        # savepoint flushes what was pending before it begins). Only the outermost one counts.
        if not getattr(previous, "nested", False):
            session.info.pop(_PENDING, None)
