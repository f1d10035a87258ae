"""The email channel: frontdesk's SMTP server in, the configured relay out.

(The IMAP mailbox reader is a channel object of its own, :mod:`.imap`, whose journal rows this
channel parses.) Through :meth:`EmailChannel.attach` it also plugs into the ingest transaction:
bounces mark the reply they are about as failed (:mod:`.records`), and verification codes for
identity links are checked (:class:`frontdesk.domain.contacts.LinkVerifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from frontdesk.channels.base import Accept, ChannelContext, ChannelParts
from frontdesk.channels.email import EmailConfig
from frontdesk.channels.email.parse import email_parser
from frontdesk.channels.email.sender import EmailSender
from frontdesk.channels.email.smtp import InboxAddresses, SmtpServer
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt

log = logging.getLogger(__name__)



class EmailChannel:
    name = "email"
    journal_names = ("email",)
    channel_names = EmailConfig.channel_names

    def __init__(self, config: EmailConfig) -> None:
        self._config = config
        self._inboxes = tuple(config.inbox_addresses)
        self._sender = EmailSender(config.outbound)
        self._parse = email_parser(config, (self._sender.from_domain,))
        self.smtp: SmtpServer | None = None
        if config.smtp_server.enabled:
            self.smtp = SmtpServer(config.smtp_server, InboxAddresses(self._inboxes))

    async def start(self, accept: Accept) -> None:
        if self.smtp is not None:
            if not self._inboxes:
                log.warning("email.inbox_addresses is empty: the SMTP server refuses every "
                            "recipient until you name at least one inbox address")
            await self.smtp.start(accept)

    async def stop(self) -> None:
        if self.smtp is not None:
            await self.smtp.stop()

    @property
    def ready(self) -> bool:
        return self.smtp is None or self.smtp.serving

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return self._parse(raw, meta)

    def bind(self, context: ChannelContext) -> ChannelParts:
        """The store-side half: bounce handling and verified identity links."""
        from frontdesk.channels.email.records import apply_delivery_report
        from frontdesk.domain.contacts import LinkVerifier

        return ChannelParts(inbound_filters=(apply_delivery_report,),
                            inbound_hooks=(LinkVerifier(context.replies),))

    async def send(self, outbound: OutboundMessage) -> Receipt:
        return await self._sender.send(outbound)
