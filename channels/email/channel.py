"""The email channel: frontdesk's SMTP server in, the configured relay out.

(The IMAP mailbox reader is a channel object of its own, :mod:`.imap`, whose journal rows this
channel parses.) Through :meth:`EmailChannel.attach` it also plugs into the ingest transaction:
bounces mark the reply they are about as failed (:mod:`.records`), and verification codes for
identity links are checked (:class:`frontdesk.domain.contacts.LinkVerifier`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from frontdesk.channels.base import Accept, ChannelContext, ChannelParts, TemporaryFailure
from frontdesk.channels.email import EmailConfig
from frontdesk.channels.email.parse import email_parser
from frontdesk.channels.email.sender import EmailSender
from frontdesk.channels.email.smtp import InboxAddresses, SmtpServer
from frontdesk.channels.files import read_files
from frontdesk.domain.messages import InboundMessage, OutboundMessage, Receipt
from frontdesk.storage.attachments import AttachmentStore

if TYPE_CHECKING:
    from frontdesk.channels.email.oauth import AccessTokens

log = logging.getLogger(__name__)



class EmailChannel:
    name = "email"
    journal_names = ("email",)
    channel_names = EmailConfig.channel_names

    def __init__(self, config: EmailConfig, *, tokens: AccessTokens | None = None) -> None:
        self._config = config
        self._inboxes = tuple(config.inbox_addresses)
        self._tokens = tokens if config.outbound.auth == "oauth2" else None
        """The relay's access tokens (``email.outbound.auth = "oauth2"``)."""
        self._sender = EmailSender(config.outbound, tokens=self._tokens)
        self._parse = email_parser(config, (self._sender.from_domain,))
        self.smtp: SmtpServer | None = None
        self._files: AttachmentStore | None = None  # bind(): staff files' bytes
        if config.smtp_server.enabled:
            self.smtp = SmtpServer(config.smtp_server, InboxAddresses(self._inboxes))

    async def start(self, accept: Accept) -> None:
        if self._tokens is not None:
            await self._tokens.start()
        if self.smtp is not None:
            if not self._inboxes:
                log.warning("email.inbox_addresses is empty: the SMTP server refuses every "
                            "recipient until you name at least one inbox address")
            await self.smtp.start(accept)

    async def stop(self) -> None:
        if self.smtp is not None:
            await self.smtp.stop()
        await self._sender.close()
        if self._tokens is not None:
            await self._tokens.stop()

    @property
    def ready(self) -> bool:
        return self.smtp is None or self.smtp.serving

    def readiness_checks(self) -> dict[str, str]:
        """``/readyz`` names the relay's sign-in when it is in trouble (``oauth:<account>``)."""
        if self._tokens is None:
            return {}
        return self._tokens.checks(self._config.outbound.username)

    def parse(self, raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
        return self._parse(raw, meta)

    def bind(self, context: ChannelContext) -> ChannelParts:
        """The store-side half: bounce handling and verified identity links."""
        from frontdesk.channels.email.records import apply_delivery_report
        from frontdesk.domain.contacts import LinkVerifier

        if self._tokens is not None:
            self._tokens.connect(context.store, clock=context.clock)
            self._tokens.watch(self._config.outbound.username)

        self._files = context.attachments
        return ChannelParts(inbound_filters=(apply_delivery_report,),
                            inbound_hooks=(LinkVerifier(context.replies),))

    async def send(self, outbound: OutboundMessage) -> Receipt:
        """Relay the reply, with the files staff attached (read from the attachment store)."""
        files: list[bytes] = []
        if outbound.attachments:
            if self._files is None:
                raise TemporaryFailure("the email channel is not attached to the store yet")
            files = await read_files(self._files, outbound.attachments)
        return await self._sender.send(outbound, files)
