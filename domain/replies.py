"""The one reply composer: every message frontdesk writes to a customer goes through here.

Staff replies (Slack, the command line), the scheduler's acknowledgements, surveys and reminders,
and verification codes all become an :class:`~frontdesk.domain.messages.OutboundMessage`
the same way. What a channel adds so that the customer's side threads the message (an email's
Message-ID, In-Reply-To, References, Reply-To and "Re:" subject) is the channel's own
:class:`Threading`, handed in by whoever composes the daemon; the domain knows no channel's
wire details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from frontdesk.domain.messages import OutboundFile, OutboundMessage
from frontdesk.storage.models import Attachment, Conversation, Message, Outbox

REPLY_VIA = "X-Frontdesk-Reply-Via"
"""The header key, on a customer message, of the channel replies to it go out on when the
message says so itself: a contact staff logged (a phone call, a letter) is answered by ``email``
or ``sms`` at the address given. Empty: nothing reaches the customer (no email address, no phone
number): a staff reply is kept as a note and they must be called back."""


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """Where a message to a customer belongs: what a channel needs to thread it."""

    reference: str = ""
    subject: str = ""
    """The conversation's subject (a staff reply on email answers "Re: <subject> [FD-12]")."""
    inbox_address: str | None = None
    """The address of ours the customer wrote to (email)."""
    answering: str | None = None
    """The remote id of the customer message this answers."""
    earlier: Sequence[str] = ()
    """Remote ids of the conversation's earlier messages on this channel, oldest first."""
    cc: Sequence[str] = ()
    """Addresses a staff reply copies (the conversation's CC list, :mod:`.cc`); a channel
    that can copy people (email) puts them in ``OutboundMessage.cc``, the others ignore it."""


class Threading(Protocol):
    """A channel's part in composing: given the plain message, return it with the fields that
    make it thread on the customer's side (and a remote id of its own in ``message_id`` when the
    channel knows it before sending)."""

    def thread(self, outbound: OutboundMessage, context: ReplyContext) -> OutboundMessage: ...


@dataclass(frozen=True)
class ReplyComposer:
    """Composes and queues messages to customers; ``threading`` by customer channel name."""

    threading: Mapping[str, Threading] = field(default_factory=dict)
    channels: frozenset[str] = frozenset()
    """The customer channels this installation has (an address may name one: ``sms:+1...``)."""
    signature: str = "our support team"
    """Who the team is, in words for a customer ("Example Support")."""
    via: Mapping[str, str] = field(default_factory=dict)
    """Customer channels whose replies go out on another channel: a contact form's (``form``)
    by ``email``."""

    def channel_for(self, conversation: Conversation, answering: Message | None) -> str:
        """The channel a message to the customer goes out on: the one the customer last wrote
        on (an answer by mail to a website chat goes back by mail), else the conversation's;
        then where that channel's replies go (:attr:`via`, or the message's :data:`REPLY_VIA`)."""
        channel = conversation.channel
        if answering is not None and answering.direction == "in" and answering.channel:
            channel = answering.channel
            named = (answering.headers or {}).get(REPLY_VIA)
            if isinstance(named, str) and named in self.channels:
                return named
        return self.via.get(channel, channel)

    @staticmethod
    def unreachable(answering: Message) -> bool:
        """Nothing reaches the customer who wrote ``answering`` (:data:`REPLY_VIA` empty)."""
        return answering.direction == "in" and (answering.headers or {}).get(REPLY_VIA) == ""

    def compose(self, outbound: OutboundMessage, context: ReplyContext) -> OutboundMessage:
        threading = self.threading.get(outbound.channel)
        if threading is not None:
            return threading.thread(outbound, context)
        # Which message it answers: where two providers serve one channel (WhatsApp through
        # Twilio and through Meta), the one that received it sends the answer.
        return replace(outbound, in_reply_to=outbound.in_reply_to or context.answering)

    async def queue(self, session: AsyncSession, conversation: Conversation, *,
                    answering: Message, text: str, author: str, author_name: str,
                    now: datetime, subject: str = "", automated: bool = False,
                    headers: Mapping[str, str] | None = None,
                    nameless: bool = False, to_address: str | None = None,
                    cc: Sequence[str] = (),
                    attachments: Sequence[OutboundFile] = (),
                    earlier: Mapping[str, Sequence[str]] | None = None,
                    after_flush: list[Callable[[], None]] | None = None) -> Message:
        """Store a message to the customer (``author``: ``staff`` or ``system``) answering
        ``answering`` and queue its delivery on the conversation's channel in the outbox.
        ``nameless``: no display name beside the recipient's address (a name the sender chose
        is not repeated to an address nobody verified). ``to_address``: the recipient, when not
        ``answering``'s sender; ``cc``: addresses to copy (reply-all), for a staff reply only:
        automated messages (acknowledgements, surveys) never copy anyone. ``attachments``: files
        already in the attachment store (:func:`.files.store_files`), made ``attachments`` rows
        of the message and named in the outbox payload. ``earlier``: the remote ids of the
        conversation's messages by channel, oldest first, when the caller read them already
        (:func:`earlier_ids`, for many conversations at once). ``after_flush``: the caller
        queues many messages in one transaction and flushes once for all of them (a flush is
        about 1.6 ms, a third of what acknowledging a new conversation cost); the outbox row,
        whose key names the message's id, is then added by the step appended here, which the
        caller runs after its flush. Without it (or with files to attach) this flushes now."""
        channel = self.channel_for(conversation, answering)
        to_address = to_address or answering.address
        cc = () if automated or author != "staff" else tuple(cc)
        if earlier is None:
            earlier = (await earlier_ids(session, [conversation.id])).get(conversation.id, {})
        out = self.compose(
            OutboundMessage(channel=channel, to_address=to_address, text=text,
                            subject=subject, conversation_reference=conversation.reference,
                            to_name="" if nameless else (
                                conversation.contact.name or (answering.author_name if
                                                              to_address == answering.address
                                                              else "")),
                            automated=automated),
            ReplyContext(reference=conversation.reference, subject=conversation.subject,
                         inbox_address=conversation.inbox_address,
                         answering=answering.external_id,
                         earlier=earlier.get(channel, ()), cc=cc))
        message = Message(conversation_id=conversation.id, direction="out", author=author,
                          author_name=author_name, channel=channel,
                          external_id=out.message_id, address=to_address,
                          subject=out.subject, text=text,
                          headers={**(headers or {}), **({"Cc": ", ".join(out.cc)} if out.cc
                                                         else {})},
                          automated=automated, delivery_status="queued", created_at=now)
        session.add(message)

        def deliver(files: tuple[OutboundFile, ...] = ()) -> None:
            key = f"message-{message.id}"
            session.add(Outbox(kind="deliver", conversation_id=conversation.id,
                               message_id=message.id,
                               payload=asdict(replace(out, idempotency_key=key,
                                                      attachments=files)),
                               idempotency_key=key, state="pending", attempts=0,
                               next_attempt_at=now, created_at=now))

        if after_flush is not None and not attachments:
            after_flush.append(deliver)
            return message
        await session.flush()
        deliver(await attach_files(session, message, attachments))
        return message


async def earlier_ids(session: AsyncSession, conversation_ids: Sequence[int]
                      ) -> dict[int, dict[str, list[str]]]:
    """For each conversation, the remote ids of its messages by channel, oldest first (what a
    channel threads a new message on: :attr:`ReplyContext.earlier`), in one query."""
    found: dict[int, dict[str, list[str]]] = {}
    if not conversation_ids:
        return found
    for conversation_id, channel, remote_id in (await session.execute(
            select(Message.conversation_id, Message.channel, Message.external_id)
            .where(Message.conversation_id.in_(conversation_ids),
                   Message.external_id.is_not(None))
            .order_by(Message.id))).all():
        if remote_id:
            found.setdefault(conversation_id, {}).setdefault(channel, []).append(remote_id)
    return found


async def attach_files(session: AsyncSession, message: Message,
                       files: Sequence[OutboundFile]) -> tuple[OutboundFile, ...]:
    """Make ``files`` (already in the attachment store) ``attachments`` rows of ``message``;
    the files as the outbox names them (with their row ids)."""
    rows = [Attachment(message_id=message.id, filename=f.filename[:512],
                       content_type=f.content_type[:256], size=f.size, sha256=f.sha256)
            for f in files]
    if not rows:
        return ()
    session.add_all(rows)
    await session.flush()
    set_committed_value(message, "attachments", rows)  # what the store now holds, no load
    return tuple(OutboundFile(r.filename, r.content_type, r.size, r.sha256, r.id) for r in rows)
