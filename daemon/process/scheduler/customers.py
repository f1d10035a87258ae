"""Automatic messages to customers: acknowledgements, surveys and reminders.

Whether one may go to a customer on their channel (the channel runs, the number did not opt out),
in which language (the contact's ``language`` tag, else the message's Content-Language, else
``scheduler.default_language``) and with which words (the configured template for the kind,
channel and language, else the built-in one); then the message stored (author ``system``),
queued on the customer's channel as automated (email: Auto-Submitted: auto-replied, null return
path) and written in the events audit as ``<kind>_sent``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import PHONE_CHANNELS
from frontdesk.daemon.process.scheduler.audit import audit
from frontdesk.domain import notices
from frontdesk.domain.replies import ReplyComposer
from frontdesk.storage.models import Contact, Conversation, Message, PhoneOptOut

Templates = Mapping[str, Mapping[str, notices.TemplateLike]]
"""Configured templates of one kind, by channel (or ``chat``) and language."""


async def last_from_customer(s: AsyncSession, c: Conversation) -> Message | None:
    """The conversation's last message written by the customer (not an automated one)."""
    return (await s.execute(
        select(Message).where(Message.conversation_id == c.id, Message.direction == "in",
                              Message.author == "customer", Message.automated.is_(False))
        .order_by(Message.id.desc()).limit(1))).scalars().first()


class CustomerNotices:
    """Words and sends the scheduler's automatic messages."""

    def __init__(self, replies: ReplyComposer, *, channel_names: Set[str],
                 default_language: str) -> None:
        self.replies = replies
        self.channel_names = channel_names
        self.default_language = default_language

    async def refusal(self, s: AsyncSession, channel: str, address: str) -> str | None:
        """Why no automatic message may go to ``address`` on ``channel``, or None."""
        if channel not in self.channel_names:
            return f"the {channel} channel is not enabled"
        if channel in PHONE_CHANNELS:
            number = address.removeprefix("whatsapp:")
            opted_out = (await s.execute(select(PhoneOptOut.opted_out)
                                         .where(PhoneOptOut.address == number))).scalar()
            if opted_out:
                return f"{number} opted out of messages"
        return None

    def language(self, contact: Contact | None, message: Message) -> str:
        tags = contact.tags if contact is not None and contact.tags else {}
        language = tags.get("language")
        if isinstance(language, str) and language.strip():
            return language.strip().lower()
        headers = {k.lower(): v for k, v in (message.headers or {}).items()}
        header = str(headers.get("content-language") or "").split(",")[0].strip()
        if header:
            return header.lower()
        return self.default_language

    def _values(self, c: Conversation, contact: Contact | None, message: Message,
                language: str) -> dict[str, str]:
        name = (contact.name if contact is not None else "") or message.author_name
        full, first = notices.greeting_name(name, language)
        return {"reference": c.reference, "name": full, "first_name": first,
                "subject": c.subject.strip() or "your message"}

    async def send(self, s: AsyncSession, c: Conversation, contact: Contact | None,
                   answering: Message, *, kind: str, author_name: str, templates: Templates,
                   now: datetime, language: str | None = None,
                   values: Mapping[str, str] | None = None,
                   data: Mapping[str, object] | None = None,
                   neutral: bool = False,
                   earlier: Mapping[str, Sequence[str]] | None = None,
                   after_flush: list[Callable[[], None]] | None = None) -> Message:
        """Word the ``kind`` message (``values`` beside the common placeholders), store it,
        queue it answering ``answering`` and audit ``<kind>_sent`` (with ``data``).

        ``neutral``: the recipient's address is not verified (:data:`SENDER_CHECK`), so the
        message repeats none of the sender's words: no name (the greeting's neutral word, no
        display name on the To line), no subject of theirs.

        ``after_flush``: the message's id is known only after the caller's flush; its outbox
        row and audit event are added by the steps appended here (see
        :meth:`ReplyComposer.queue`)."""
        if language is None:
            language = self.language(contact, answering)
        template = notices.choose(kind, self.replies.channel_for(c, answering), language,
                                  self.default_language, templates)
        words = self._values(c, contact, answering, language) | dict(values or {})
        if neutral:
            nobody, _ = notices.greeting_name("", language)
            words |= {"name": nobody, "first_name": nobody, "subject": notices.your_message(
                language)}
        text = notices.render(template.text, words)
        subject = notices.render(template.subject, words) if template.subject else ""
        message = await self.replies.queue(s, c, answering=answering, text=text, author="system",
                                           author_name=author_name, subject=subject,
                                           automated=True, headers={"X-Frontdesk-Kind": kind},
                                           now=now, nameless=neutral, earlier=earlier,
                                           after_flush=after_flush)

        def audited() -> None:
            audit(s, f"{kind}_sent", c, now,
                  {"channel": c.channel, "to": answering.address, **(data or {})},
                  message_id=message.id)

        if after_flush is None:
            audited()
        else:
            after_flush.append(audited)
        return message
