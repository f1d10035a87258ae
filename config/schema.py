"""The configuration schema: every key of frontdesk.toml, its type, default and check.

Unknown keys are errors. Durations are strings like "90s", "15m", "4h", "2d" and become
:class:`datetime.timedelta`. Secrets are :class:`pydantic.SecretStr`, so printing or logging a
settings object shows ``**********`` instead of the value.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """``"90s"`` → 90 seconds. Accepts a timedelta unchanged."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError('a duration is a string like "90s", "15m", "4h" or "2d"')
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f'{value!r} is not a duration like "90s", "15m", "4h" or "2d"')
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _at_least_one_second(value: timedelta) -> timedelta:
    if value < timedelta(seconds=1):
        raise ValueError('must be at least "1s"')
    return value


_DurationBase = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
Duration = Annotated[_DurationBase, AfterValidator(_at_least_one_second)]
"""A duration of at least one second."""
Delay = _DurationBase
"""A duration that may be zero (``"0s"``)."""


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'{value!r} is not "host:port" (for example "127.0.0.1:8025")')
    return value


Listen = Annotated[str, AfterValidator(_host_port)]


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


_ADDR = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$|^[^@\s<>]+@localhost$")


def _email_address(value: str) -> str:
    value = value.strip()
    if not _ADDR.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value.lower()


EmailAddress = Annotated[str, AfterValidator(_email_address)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)


class DatabaseConfig(Section):
    url: str = "sqlite+aiosqlite:///./frontdesk.db"
    sqlite_synchronous: Literal["full", "normal"] = "full"

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "use sqlite+aiosqlite:///path/to/frontdesk.db or postgresql+asyncpg://user@host/db"
            )
        return value


class HttpConfig(Section):
    listen: Listen = "127.0.0.1:8080"
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http://)")
        return value.rstrip("/")


class SmtpServerConfig(Section):
    enabled: bool = True
    listen: Listen = "127.0.0.1:8025"
    hostname: str = ""
    max_message_bytes: int = Field(default=26214400, ge=1024)
    tls_cert: str = ""
    tls_key: str = ""
    require_starttls: bool = False
    auth_username: str = ""
    auth_password: SecretStr = SecretStr("")
    auth_required: bool = False

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
    ca_file: str = ""
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
    ca_file: str = ""
    move_to: str = ""


class EmailConfig(Section):
    inbox_addresses: list[EmailAddress] = Field(default_factory=list)
    smtp_server: SmtpServerConfig = Field(default_factory=SmtpServerConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    imap: ImapConfig = Field(default_factory=ImapConfig)


class TwilioConfig(Section):
    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    sms_from: str = ""
    whatsapp_from: str = ""
    api_base_url: str = "https://api.twilio.com"
    webhook_signing_key: SecretStr = SecretStr("")


class TelegramConfig(Section):
    bot_token: SecretStr = SecretStr("")
    api_base_url: str = "https://api.telegram.org"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret: SecretStr = SecretStr("")


class SlackConfig(Section):
    bot_token: SecretStr = SecretStr("")
    signing_secret: SecretStr = SecretStr("")
    channel_id: str = ""
    mode: Literal["http", "socket"] = "http"
    app_token: SecretStr = SecretStr("")
    api_base_url: str = "https://slack.com/api/"


_RATE = re.compile(r"^(\d+)/(\d+[smhd])$")


def _rate_limit(value: str) -> str:
    m = _RATE.match(value.strip())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f'{value!r} is not a rate like "10/10m"')
    parse_duration(m.group(2))
    return value.strip()


class AcknowledgementConfig(Section):
    enabled: bool = True
    delay: Delay = timedelta(0)
    rate_limits: list[Annotated[str, AfterValidator(_rate_limit)]] = Field(
        default_factory=lambda: ["10/10m", "15/30m", "25/1h", "50/3h", "100/10h"]
    )


class ConversationConfig(Section):
    reopen_window: Duration = timedelta(days=7)


class DaemonConfig(Section):
    shutdown_timeout: Duration = timedelta(seconds=25)
    data_dir: str = "./frontdesk-data"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    outbox_poll: Duration = timedelta(seconds=1)
    outbox_retry_initial: Duration = timedelta(seconds=30)
    outbox_retry_max: Duration = timedelta(hours=1)
    outbox_max_attempts: int = Field(default=12, ge=1)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (like Europe/London)") from None
    return value


def _business_hours(value: str) -> str:
    from frontdesk.daemon.business_hours import parse_business_hours

    parse_business_hours(value)
    return value


class SlaConfig(Section):
    first_response: Duration = timedelta(hours=1)
    timezone: Annotated[str, AfterValidator(_timezone)] = "Europe/London"
    business_hours: Annotated[str, AfterValidator(_business_hours)] = "always"
    holidays_country: str = ""
    holidays: list[date] = Field(default_factory=list)

    @field_validator("holidays_country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value:
            import holidays

            if value.upper() not in holidays.list_supported_countries():
                raise ValueError(f"{value!r} is not a country code the holidays package knows")
        return value.upper()


class EscalationLevel(Section):
    after: Duration = timedelta(hours=1)
    notify: str = "slack"


class Settings(Section):
    """The whole configuration."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    email: EmailConfig = Field(default_factory=EmailConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    acknowledgement: AcknowledgementConfig = Field(default_factory=AcknowledgementConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    sla: SlaConfig = Field(default_factory=SlaConfig)
    escalation: list[EscalationLevel] = Field(default_factory=lambda: [EscalationLevel()])
