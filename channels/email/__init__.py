"""Email: an SMTP server of our own, an IMAP mailbox, replies through a relay.

This module declares the channel: its config section ``[email]`` (:class:`EmailConfig`), which
builds the channels (the SMTP server, the IMAP reader) and gives the email threading of replies.
The modules beside it do the work; the SDKs they need are imported only when a channel runs.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

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
    auth: Literal["password", "oauth2"] = "password"
    """``oauth2``: AUTH XOAUTH2 as ``username`` with an access token from ``[email.oauth]``
    (``frontdesk oauth login``) instead of the password."""
    timeout: Duration = timedelta(seconds=30)
    max_message_bytes: int = Field(default=26214400, ge=1024)
    """The largest email the relay takes (files included, as encoded): a reply whose files make
    it larger fails at once, saying so, instead of being refused by the relay."""

    model_config = ConfigDict(populate_by_name=True)


class ImapConfig(Section):
    host: str = ""
    port: int = Field(default=993, ge=1, le=65535)
    tls: bool = True
    starttls: Literal["off", "required"] = "off"
    username: str = ""
    password: SecretStr = SecretStr("")
    auth: Literal["password", "oauth2"] = "password"
    """``oauth2``: AUTHENTICATE XOAUTH2 as ``username`` with an access token from
    ``[email.oauth]`` (``frontdesk oauth login``) instead of LOGIN with the password."""
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


def _oauth_endpoint(value: str) -> str:
    value = value.strip()
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return value  # a server on this machine (a test, a local identity provider)
    raise ValueError("must be an https:// address (http:// only for a server on this machine)")


OAuthEndpoint = Annotated[str, AfterValidator(_oauth_endpoint)]
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OAuthConfig(Section):
    """``[email.oauth]``: the app registration frontdesk signs in with (OAuth 2.0, SASL
    XOAUTH2) where ``email.imap.auth`` or ``email.outbound.auth`` is ``"oauth2"``. The refresh
    token itself is in the store (``frontdesk oauth login``), encrypted with the key in the
    environment variable named by ``key_env``."""

    provider: Literal["", "google", "microsoft", "generic"] = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    """Google's clients have one; a Microsoft public client (device code flow) has none."""
    tenant: str = "common"
    """Microsoft: ``common``, ``organizations``, or the directory's id or domain."""
    authorization_endpoint: OAuthEndpoint = ""
    token_endpoint: OAuthEndpoint = ""
    device_authorization_endpoint: OAuthEndpoint = ""
    """Set, these three override the provider's own (``generic`` needs ``token_endpoint``)."""
    scopes: list[str] = Field(default_factory=list)
    """Empty: the provider's (Google: ``https://mail.google.com/``; Microsoft: IMAP, SMTP and
    ``offline_access``); ``generic`` needs them."""
    key_env: str = "FRONTDESK_OAUTH_KEY"
    """The environment variable holding the Fernet key that encrypts the stored refresh
    tokens (``frontdesk oauth key`` makes one)."""

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not _TENANT.match(value):
            raise ValueError(f"{value!r} is not a tenant: common, organizations, or the "
                             "directory's id or domain")
        return value

    @field_validator("key_env")
    @classmethod
    def _key_env(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        if value.upper().startswith("FRONTDESK_") and "__" in value:
            raise ValueError(f"{value} would be read as a config key (FRONTDESK_ with __); "
                             "choose a name without a double underscore")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        out = [scope.strip() for scope in value if scope.strip()]
        if any(" " in scope for scope in out):
            raise ValueError("one scope per list item (no spaces within one)")
        return out


class EmailConfig(ChannelSection):
    """``[email]``: the SMTP server of our own, the relay for replies, an IMAP mailbox."""

    channel_names = ("email",)

    inbox_addresses: list[EmailAddress] = Field(default_factory=list)
    smtp_server: SmtpServerConfig = Field(default_factory=SmtpServerConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    imap: ImapConfig = Field(default_factory=ImapConfig)
    oauth: OAuthConfig = Field(default_factory=OAuthConfig)
    reply_languages: list[str] = Field(default_factory=lambda: ["all"])
    """The languages whose quote headers ("On ... wrote:", "Von:/Gesendet:") split a reply's
    new part from its quote: ``["all"]`` (every language the splitter knows), or some of them
    (``["en", "de"]``)."""
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

    @model_validator(mode="after")
    def _oauth_ready(self) -> EmailConfig:
        """Signing in with OAuth 2.0 needs the app registration and the key for the stored
        tokens; every missing piece is named at once."""
        users = [key for key, auth in (("email.imap.auth", self.imap.auth),
                                       ("email.outbound.auth", self.outbound.auth))
                 if auth == "oauth2"]
        if not users:
            return self
        o = self.oauth
        problems = []
        if not o.provider:
            problems.append("email.oauth.provider (google, microsoft or generic)")
        if not o.client_id:
            problems.append("email.oauth.client_id (the app registration's client id)")
        if o.provider == "generic":
            if not o.token_endpoint:
                problems.append("email.oauth.token_endpoint (generic has no preset)")
            if not o.scopes:
                problems.append("email.oauth.scopes (generic has no preset)")
        if self.outbound.auth == "oauth2" and not self.outbound.username:
            problems.append("email.outbound.username (the mailbox address the relay signs "
                            "in as)")
        from frontdesk.channels.email.oauth import key_problem

        if (problem := key_problem(o.key_env)) is not None:
            problems.append(problem)
        if problems:
            raise ValueError(" and ".join(users) + ' = "oauth2" needs: ' + "; ".join(problems))
        return self

    @field_validator("reply_languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        from frontdesk.channels.email.quotes import ALL, LANGUAGES

        out = []
        for language in value:
            code = language.strip().lower()
            if code != ALL and code not in LANGUAGES:
                raise ValueError(f"{language!r} is not a language the quoted-reply splitter "
                                 f"knows ({ALL!r} or {', '.join(sorted(LANGUAGES))})")
            out.append(code)
        return out or [ALL]

    def build(self, core: CoreSettings) -> list[Channel | str]:
        """Email is always on: replies go out through the relay even when the SMTP server is
        off (mail then comes in only through the IMAP mailbox). The IMAP reader runs when
        ``email.imap.host`` and its login are set and aioimaplib (the ``frontdesk[imap]``
        extra) is installed."""
        from frontdesk.channels.email.channel import EmailChannel

        tokens = None
        if "oauth2" in (self.imap.auth, self.outbound.auth):
            from frontdesk.channels.email.oauth import AccessTokens

            tokens = AccessTokens(self.oauth)  # one per process, shared by reader and relay
        built: list[Channel | str] = [EmailChannel(self, tokens=tokens)]
        if not self.smtp_server.enabled:
            built.append("smtp server disabled: email.smtp_server.enabled is false")
        imap = self.imap
        if not imap.host:
            built.append("imap mailbox disabled: email.imap.host is not set")
        elif not imap.username:
            built.append("imap mailbox disabled: email.imap.username is not set")
        elif imap.auth == "password" and not imap.password.get_secret_value():
            built.append("imap mailbox disabled: email.imap.password is not set "
                         "(FRONTDESK_EMAIL__IMAP__PASSWORD)")
        elif importlib.util.find_spec("aioimaplib") is None:
            built.append("imap mailbox disabled: aioimaplib is not installed "
                         "(pip install 'frontdesk[imap]')")
        else:
            from frontdesk.channels.email.imap import ImapChannel

            built.append(ImapChannel(self, tokens=tokens))
        return built

    def threading(self) -> Threading:
        from frontdesk.channels.email.threading import EmailThreading

        return EmailThreading(self)
