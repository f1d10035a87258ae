"""The store's tables as SQLAlchemy 2 models.

Times are stored in UTC. On SQLite they are naive strings with microseconds; :class:`UTCDateTime`
hands them back timezone-aware, so the rest of the code only ever sees aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.schema import Table
from sqlalchemy.types import TypeDecorator

from frontdesk.storage.clock import utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware-UTC datetime on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (autoincrementing) when the type
# is exactly INTEGER; PostgreSQL gets BIGINT identities.
Id = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(), dict[str, Any]: JSON()}


def core_table(model: type[Base]) -> Table:
    """The Core table of a mapped class, typed as one (for insert/update statements)."""
    mapped = model.__table__
    assert isinstance(mapped, Table)
    return mapped


class InboundJournal(Base):
    """Every raw inbound message, committed before the sender gets its answer."""

    __tablename__ = "inbound_journal"
    __table_args__ = (
        UniqueConstraint("channel", "remote_id", name="uq_inbound_journal_channel_remote_id"),
        Index("ix_inbound_journal_state_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    remote_id: Mapped[str] = mapped_column(String(512))
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # pending | done | failed | discarded (a dead letter kept, no longer counted as failed)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    message_id: Mapped[int | None] = mapped_column(Id)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    merged_into_id: Mapped[int | None] = mapped_column(Id, ForeignKey("contacts.id"))

    identities: Mapped[list[Identity]] = relationship(
        back_populates="contact", order_by="Identity.id", lazy="selectin"
    )


class Identity(Base):
    """A normalised address of a contact on one channel (lower-case email, E.164, user id)."""

    __tablename__ = "identities"
    __table_args__ = (
        UniqueConstraint("channel", "address", name="uq_identities_channel_address"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(Id, ForeignKey("contacts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    contact: Mapped[Contact] = relationship(back_populates="identities")


class Conversation(Base):
    """One customer matter; its reference is FD-<id>."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_status_id", "status", "id"),
        Index("ix_conversations_contact_channel", "contact_id", "channel"),
        Index("ix_conversations_next_due_at", "next_due_at"),
        Index("ix_conversations_updated_at", "updated_at"),  # 0011: similar's refresh
        Index("ix_conversations_sla_dirty", "id",
              sqlite_where=text("updated_at <> sla_checked_at"),
              postgresql_where=text("updated_at <> sla_checked_at")),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="open")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    subject: Mapped[str] = mapped_column(String(998), default="")
    channel: Mapped[str] = mapped_column(String(16))
    inbox_address: Mapped[str | None] = mapped_column(String(320))
    contact_id: Mapped[int] = mapped_column(Id, ForeignKey("contacts.id"))
    assignee: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_customer_message_at: Mapped[datetime | None]
    last_staff_message_at: Mapped[datetime | None]
    first_response_due_at: Mapped[datetime | None] = mapped_column(index=True)
    first_responded_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    snoozed_until: Mapped[datetime | None]
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    # The scheduler's due times and bookkeeping (frontdesk.daemon.process.scheduler, migration
    # 0005):
    # next_due_at is the earliest thing it has to do; a row whose updated_at differs from
    # sla_checked_at changed since the scheduler last looked (both indexed for the sweep).
    ack_due_at: Mapped[datetime | None]
    next_response_due_at: Mapped[datetime | None]
    resolution_due_at: Mapped[datetime | None]
    escalation_due_at: Mapped[datetime | None]
    survey_due_at: Mapped[datetime | None]
    survey_sent_at: Mapped[datetime | None]
    reminder_due_at: Mapped[datetime | None]
    next_due_at: Mapped[datetime | None]
    sla_checked_at: Mapped[datetime | None]
    sla_policy: Mapped[str | None] = mapped_column(String(64))
    sla_state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rating: Mapped[int | None] = mapped_column(Integer)
    rated_at: Mapped[datetime | None]
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))  # 0010
    resolution_note: Mapped[str | None] = mapped_column(Text)  # what solved it; 0010
    cc: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    """Addresses the customer copied (email), kept on staff replies unless removed; 0012."""

    contact: Mapped[Contact] = relationship(lazy="joined")

    @property
    def reference(self) -> str:
        return f"FD-{self.id}"


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id", name="uq_messages_channel_external_id"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(Id, ForeignKey("conversations.id"))
    direction: Mapped[str] = mapped_column(String(8))  # in | out
    author: Mapped[str] = mapped_column(String(16))  # customer | staff | system
    author_name: Mapped[str] = mapped_column(String(256), default="")
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str | None] = mapped_column(String(512))
    address: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    text_new: Mapped[str | None] = mapped_column(Text)  # the new part of a quoted reply
    html: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    automated: Mapped[bool] = mapped_column(Boolean, default=False)
    is_note: Mapped[bool] = mapped_column(Boolean, default=False)
    delivery_status: Mapped[str | None] = mapped_column(String(16))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    journal_id: Mapped[int | None] = mapped_column(Id)

    attachments: Mapped[list[Attachment]] = relationship(
        order_by="Attachment.id", lazy="selectin"
    )


class Attachment(Base):
    """Metadata of a file stored under the data directory by its SHA-256."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(Id, ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(256))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


def outbox_remote(kind: str, payload: Mapping[str, Any] | None) -> str:
    """Where an outbox row goes, as ``outbox.channel`` names it: the customer channel of a message
    or of a channel's own job (``payload["channel"]``), ``"slack"`` for the Slack desk's work
    (``payload["slack_channel"]``), otherwise the row's kind."""
    payload = payload or {}
    channel = payload.get("channel")
    if isinstance(channel, str) and channel:
        return channel[:32]
    if payload.get("slack_channel"):
        return "slack"
    return kind[:32]


def _row_remote(context: Any) -> str | None:
    """``outbox.channel``'s default: :func:`outbox_remote` of the row being inserted (ORM and Core
    inserts alike, one row or many)."""
    values = context.get_current_parameters()
    kind = values.get("kind")
    if not isinstance(kind, str):
        return None
    payload = values.get("payload")
    return outbox_remote(kind, payload if isinstance(payload, Mapping) else None)


def outbox_urgency(kind: str, payload: Mapping[str, Any] | None) -> int:
    """How soon a row goes among the due rows of its remote, as ``outbox.urgency`` says: 0 for
    a person's words (a message to a customer that is not automated: a staff reply), 1 for
    everything else (acknowledgements, surveys, the Slack desk's posts, a channel's jobs)."""
    return 0 if kind == "deliver" and (payload or {}).get("automated") is not True else 1


def _row_urgency(context: Any) -> int:
    """``outbox.urgency``'s default: :func:`outbox_urgency` of the row being inserted."""
    values = context.get_current_parameters()
    payload = values.get("payload")
    return outbox_urgency(str(values.get("kind")), payload if isinstance(payload, Mapping)
                          else None)


class Outbox(Base):
    """Work to send, written in the same transaction as what caused it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
                      # the head-of-lane rule (daemon/process/outbox.py) probes this; 0007, 0008
                      Index("ix_outbox_lane", "state", "kind", "conversation_id", "channel",
                            "id"),
                      # a round's due rows of one remote, in the order they go; 0013
                      Index("ix_outbox_round", "state", "channel", "urgency", "id"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # e.g. "deliver"
    conversation_id: Mapped[int | None] = mapped_column(Id, ForeignKey("conversations.id"))
    message_id: Mapped[int | None] = mapped_column(Id, ForeignKey("messages.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]
    # PostgreSQL: the instance that claimed the row to send it (migration 0006); while it sends,
    # next_attempt_at is the claim's lease, after which another instance may take the row.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    # Where the row goes (migration 0008): a customer channel, "slack", or the row's kind; filled
    # in from the payload when a row is written (outbox_remote). NULL only on rows an older
    # version wrote, which the outbox orders as before (one lane per kind and conversation).
    channel: Mapped[str | None] = mapped_column(String(32), default=_row_remote)
    # Which due rows of a remote go first (migration 0013): 0 a person's words, 1 the rest;
    # filled in from the kind and payload when a row is written (outbox_urgency).
    urgency: Mapped[int] = mapped_column(SmallInteger, default=_row_urgency,
                                         server_default=text("1"))


class Event(Base):
    """Append-only audit: what happened and who did it."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(256), default="system")
    conversation_id: Mapped[int | None] = mapped_column(Id, index=True)
    contact_id: Mapped[int | None] = mapped_column(Id)
    message_id: Mapped[int | None] = mapped_column(Id)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ChannelCheckpoint(Base):
    """Where a polling channel got to (an IMAP folder's UIDVALIDITY and last UID), saved after
    the journal commit so a restart neither skips nor repeats."""

    __tablename__ = "channel_checkpoints"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdentityLink(Base):
    """A customer's request to add an address to their contact, verified by a code sent to it."""

    __tablename__ = "identity_links"
    __table_args__ = (Index("ix_identity_links_contact_id_state", "contact_id", "state"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    contact_id: Mapped[int] = mapped_column(Id, ForeignKey("contacts.id"))
    conversation_id: Mapped[int | None] = mapped_column(Id, ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|verified|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(256), default="customer")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    verified_at: Mapped[datetime | None]


class PhoneOptOut(Base):
    """A phone number's opt-out state (SMS/WhatsApp STOP and START keywords, or Twilio's own
    error 21610). Nothing is sent to a number while ``opted_out`` is true."""

    __tablename__ = "phone_opt_outs"

    address: Mapped[str] = mapped_column(String(64), primary_key=True)  # E.164
    opted_out: Mapped[bool] = mapped_column(Boolean, default=True)
    keyword: Mapped[str] = mapped_column(String(32), default="")
    source: Mapped[str] = mapped_column(String(32), default="keyword")  # keyword | twilio
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboundPart(Base):
    """One remote message of an outbound message (long texts go out in several parts): which
    parts a retry can skip, and the delivery status the remote side reported for each."""

    __tablename__ = "outbound_parts"
    __table_args__ = (
        UniqueConstraint("channel", "remote_id", name="uq_outbound_parts_channel_remote_id"),
        UniqueConstraint("outbox_key", "part", name="uq_outbound_parts_outbox_key"),
        Index("ix_outbound_parts_message_id", "message_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))  # twilio | telegram
    remote_id: Mapped[str] = mapped_column(String(128))  # Twilio MessageSid, Telegram chat:message
    outbox_key: Mapped[str | None] = mapped_column(String(128))  # the outbox idempotency key
    message_id: Mapped[int | None] = mapped_column(Id)
    part: Mapped[int] = mapped_column(Integer, default=0)
    parts: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error_code: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TelegramOffset(Base):
    """The next getUpdates offset of a bot, saved only after the updates before it are
    journaled, so a restart neither loses nor repeats an update."""

    __tablename__ = "telegram_offsets"

    bot_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlackThread(Base):
    """The Slack staff desk's root message of a conversation (channel chosen by the routes).

    ``ts`` is empty until the root is posted; ``root_attempted_at`` is committed just before the
    post, so a retry after a crash knows to look for a root that may already be there.
    """

    __tablename__ = "slack_threads"
    __table_args__ = (
        UniqueConstraint("channel_id", "ts", name="uq_slack_threads_channel_id_ts"),
    )

    conversation_id: Mapped[int] = mapped_column(
        Id, ForeignKey("conversations.id"), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str | None] = mapped_column(String(32))
    root_attempted_at: Mapped[datetime | None]
    rendered_hash: Mapped[str | None] = mapped_column(String(64))
    alerts_only_notice: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlackMessage(Base):
    """A staff member's message in a frontdesk thread and the frontdesk message it became."""

    __tablename__ = "slack_messages"
    __table_args__ = (
        UniqueConstraint("channel_id", "ts", name="uq_slack_messages_channel_id_ts"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("messages.id"), unique=True)
    conversation_id: Mapped[int] = mapped_column(Id, ForeignKey("conversations.id"))
    channel_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    user_name: Mapped[str] = mapped_column(String(256), default="")
    user_email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SlackEvent(Base):
    """Slack event ids already handled: a retried delivery (same ``event_id``) does nothing."""

    __tablename__ = "slack_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class SlackState(Base):
    """Small named values the Slack desk keeps (the audit cursor of root-message refreshes)."""

    __tablename__ = "slack_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Acknowledgement(Base):
    """An acknowledgement sent to a customer: at most one per conversation, and counted per
    recipient for the rate limits (``acknowledgement.rate_limits``)."""

    __tablename__ = "acknowledgements"
    __table_args__ = (
        UniqueConstraint("conversation_id", name="uq_acknowledgements_conversation_id"),
        Index("ix_acknowledgements_recipient_created_at", "recipient", "created_at"),
        Index("ix_acknowledgements_created_at", "created_at"),  # the global rate limits; 0009
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(Id, ForeignKey("conversations.id"))
    message_id: Mapped[int | None] = mapped_column(Id, ForeignKey("messages.id"))
    channel: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A REST API token (``frontdesk token create``): its public id and the SHA-256 of its
    secret, never the token itself."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("name", name="uq_api_tokens_name"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the token's public part
    name: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(8), default="read")  # read | write
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(256), default="")
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiIdempotency(Base):
    """A POST's ``Idempotency-Key`` and its first answer, written in the transaction of the
    change it made: a repeat gets the same status and JSON, a crash cannot make it twice."""

    __tablename__ = "api_idempotency"
    __table_args__ = (Index("ix_api_idempotency_created_at", "created_at"),)

    token_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    conversation_id: Mapped[int | None] = mapped_column(Id, index=True)
    """The conversation the answer is about (an erasure deletes the answers it holds)."""
    status: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SavedReply(Base):
    """A saved reply kept in the store (``frontdesk saved-reply add``, the Slack shortcut);
    the config file's ``[saved_replies]`` are listed beside these."""

    __tablename__ = "saved_replies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # lower-case
    text: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OAuthToken(Base):
    """An account signed in with OAuth 2.0 (``frontdesk oauth login``) for the IMAP mailbox or
    the outbound relay: its refresh token, encrypted with the key from the environment."""

    __tablename__ = "oauth_tokens"

    account: Mapped[str] = mapped_column(String(320), primary_key=True)  # the mailbox address
    provider: Mapped[str] = mapped_column(String(16))  # google | microsoft | generic
    refresh_token: Mapped[str] = mapped_column(Text)  # encrypted (never in clear)
    scope: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    refreshed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
