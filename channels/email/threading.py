"""How a mail of ours threads on the customer's side: the email channel's part in composing.

Every mail frontdesk writes (staff replies, acknowledgements, surveys, verification codes) gets a
Message-ID of ours (:mod:`frontdesk.channels.email.ids`), answers the customer's last mail
(In-Reply-To, References: the conversation's last 20 mail ids), and carries a Reply-To
plus-address naming the conversation (``support+FD-12@example.com``, from the inbox the customer
wrote to), so an answer finds its conversation even when a mail client drops the headers.
A staff reply's subject is ``Re: <subject> [FD-12]``; a templated notice keeps its own subject.
A staff reply copies the conversation's CC list (``Cc:``, reply-all), never our own addresses
nor the customer it goes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from email.utils import parseaddr

from frontdesk.channels.email import EmailConfig
from frontdesk.channels.email.ids import new_message_id
from frontdesk.domain.messages import OutboundMessage
from frontdesk.domain.replies import ReplyContext

MAX_REFERENCES = 20


def plus_address(inbox: str, reference: str) -> str:
    """``support@example.com`` (or ``support+anything@...``) -> ``support+FD-12@example.com``."""
    local, _, domain = inbox.partition("@")
    return f"{local.split('+')[0]}+{reference}@{domain}"


def reply_subject(subject: str, reference: str) -> str:
    return f"Re: {subject.strip() or 'Your message'} [{reference}]"


class EmailThreading:
    """:class:`~frontdesk.domain.replies.Threading` for the ``email`` channel."""

    def __init__(self, email: EmailConfig) -> None:
        self._domain = parseaddr(email.outbound.from_)[1].rpartition("@")[2] or None
        self._default_inbox = next(iter(email.inbox_addresses), None)
        self._own = {a.strip().lower() for a in email.inbox_addresses}
        self._own.add(parseaddr(email.outbound.from_)[1].strip().lower())

    def thread(self, outbound: OutboundMessage, context: ReplyContext) -> OutboundMessage:
        inbox = context.inbox_address or self._default_inbox
        reference = context.reference
        subject = outbound.subject
        if not subject and reference:
            subject = reply_subject(context.subject, reference)
        return replace(
            outbound, subject=subject, message_id=new_message_id(self._domain),
            cc=self._copied(context.cc, outbound.to_address),
            in_reply_to=context.answering, references=tuple(context.earlier[-MAX_REFERENCES:]),
            reply_to=plus_address(inbox, reference) if inbox and reference else None)

    def _copied(self, cc: Sequence[str], to_address: str) -> tuple[str, ...]:
        """The CC list without the recipient, our own addresses and their plus-addresses."""
        out: list[str] = []
        for address in cc:
            address = address.strip().lower()
            local, _, domain = address.rpartition("@")
            if (not address or address == to_address.strip().lower() or address in out
                    or address in self._own or f"{local.partition('+')[0]}@{domain}" in self._own):
                continue
            out.append(address)
        return tuple(out)
