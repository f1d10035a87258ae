"""Email: an SMTP server of our own, an IMAP mailbox, replies through a relay.

This module declares the channel: its config section ``[email]`` (:class:`EmailConfig`), which
builds the channels (the SMTP server, the IMAP reader) and gives the email threading of replies.
The modules beside it do the work; the SDKs they need are imported only when a channel runs.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from typing import Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.config.schema import (
    ConfigPath,
    CoreSettings,
    Duration,
    EmailAddress,
    Listen,
    Section,
)
from frontdesk.domain.replies import Threading


class SmtpServerConfig(Section):
    enabled: bool = True
    listen: Listen = "127.0.0.1:8025"
    hostname: str = ""
    max_message_bytes: int = Field(default=26214400, ge=1024)
    tls_cert: ConfigPath = ""
    tls_key: ConfigPath = ""
    require_starttls: bool = False
    auth_username: str = ""
    auth_password: SecretStr = SecretStr("")
    auth_required: bool = False
    # Connection limits (issue 14): an extra connection is answered 421 and closed at once.
    max_connections: int = Field(default=200, ge=1)
    max_connections_per_client: int = Field(default=20, ge=1)
    # The whole DATA phase, however slowly its bytes come: 25 MiB in 10 minutes is ~350 kbit/s.
    data_timeout: Duration = timedelta(minutes=10)
    # Waiting for a command (a command line trickled byte by byte included); RFC 5321 suggests
    # 5 minutes, but a real MTA sends its next command within a second.
    idle_timeout: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _pairs(self) -> SmtpServerConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.require_starttls and not self.tls_cert:
            raise ValueError("require_starttls needs tls_cert and tls_key")
        if self.auth_username and not self.tls_cert:
            raise ValueError(
                "auth_username needs tls_cert and tls_key: AUTH is only offered over TLS")
        if self.auth_required and not self.auth_username:
            raise ValueError("auth_required needs auth_username and auth_password")
        return self


class OutboundConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    from_: str = Field(default="Support <support@example.com>", alias="from")
    tls: bool = False
    starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    verify_tls: bool = True
    ca_file: ConfigPath = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    timeout: Duration = timedelta(seconds=30)

    model_config = ConfigDict(populate_by_name=True)


class ImapConfig(Section):
    host: str = ""
    port: int = Field(default=993, ge=1, le=65535)
    tls: bool = True
    starttls: Literal["off", "required"] = "off"
    username: str = ""
    password: SecretStr = SecretStr("")
    folder: str = "INBOX"
    verify_tls: bool = True
    ca_file: ConfigPath = ""
    move_to: str = ""
    timeout: Duration = timedelta(seconds=30)
    idle: bool = True
    idle_interval: Duration = timedelta(minutes=5)
    poll_interval: Duration = timedelta(seconds=60)
    fetch_batch: int = Field(default=100, ge=1, le=1000)
    reconnect_initial: Duration = timedelta(seconds=1)
    reconnect_max: Duration = timedelta(minutes=5)

    @model_validator(mode="after")
    def _tls_choice(self) -> ImapConfig:
        if self.tls and self.starttls == "required":
            raise ValueError(
                'starttls = "required" is for a plain connection upgraded to TLS (tls = false, '
                "usually port 143); tls = true is already implicit TLS (port 993)")
        return self


class EmailConfig(ChannelSection):
    """``[email]``: the SMTP server of our own, the relay for replies, an IMAP mailbox."""

    channel_names = ("email",)

    inbox_addresses: list[EmailAddress] = Field(default_factory=list)
    smtp_server: SmtpServerConfig = Field(default_factory=SmtpServerConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    imap: ImapConfig = Field(default_factory=ImapConfig)
    reply_languages: list[str] = Field(default_factory=lambda: ["en"])
    max_mime_parts: int = Field(default=1000, ge=10, le=100_000)
    """How many MIME parts of one mail are read at most; the parts after them are left out,
    with a note in the message text (the raw mail stays whole in the journal). Bounds the time
    and memory a hostile mail (100,000 tiny parts) costs."""
    max_attachments: int = Field(default=100, ge=1, le=10_000)
    """How many attachments of one mail are kept at most; the rest are left out, with a note."""
    trusted_authserv_id: str = ""
    """The authserv-id (its host name, usually) of the mail server in front of frontdesk whose
    ``Authentication-Results`` header is believed: mail it says failed DMARC or SPF is never
    acknowledged; mail it says passed gets acknowledgements that greet the sender by name.
    Several ids: separated by commas. Empty: no header is believed."""

    @property
    def trusted_authserv_ids(self) -> list[str]:
        return [v.strip() for v in self.trusted_authserv_id.split(",") if v.strip()]

    @field_validator("reply_languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        from mailparser_reply.constants import MAIL_LANGUAGES

        known = sorted(k for k in MAIL_LANGUAGES if len(k) == 2)
        out = []
        for language in value:
            code = language.strip().lower()
            if code not in known:
                raise ValueError(f"{language!r} is not a language the quoted-reply parser knows "
                                 f"({', '.join(known)})")
            out.append(code)
        return out

    def build(self, core: CoreSettings) -> list[Channel | str]:
        """Email is always on: replies go out through the relay even when the SMTP server is
        off (mail then comes in only through the IMAP mailbox). The IMAP reader runs when
        ``email.imap.host`` and its login are set and aioimaplib (the ``frontdesk[imap]``
        extra) is installed."""
        from frontdesk.channels.email.channel import EmailChannel

        built: list[Channel | str] = [EmailChannel(self)]
        if not self.smtp_server.enabled:
            built.append("smtp server disabled: email.smtp_server.enabled is false")
        imap = self.imap
        if not imap.host:
            built.append("imap mailbox disabled: email.imap.host is not set")
        elif not imap.username:
            built.append("imap mailbox disabled: email.imap.username is not set")
        elif not imap.password.get_secret_value():
            built.append("imap mailbox disabled: email.imap.password is not set "
                         "(FRONTDESK_EMAIL__IMAP__PASSWORD)")
        elif importlib.util.find_spec("aioimaplib") is None:
            built.append("imap mailbox disabled: aioimaplib is not installed "
                         "(pip install 'frontdesk[imap]')")
        else:
            from frontdesk.channels.email.imap import ImapChannel

            built.append(ImapChannel(self))
        return built

    def threading(self) -> Threading:
        from frontdesk.channels.email.threading import EmailThreading

        return EmailThreading(self)
