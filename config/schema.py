"""The configuration schema: every key of frontdesk.toml, its type, default and check.

Unknown keys are errors. Durations are strings like "90s", "15m", "4h", "2d" and become
:class:`datetime.timedelta`. Secrets are :class:`pydantic.SecretStr`, so printing or logging a
settings object shows ``**********`` instead of the value.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from frontdesk.config.hours import parse_business_hours

_DURATION = re.compile(r"^\s*(?:\d+\s*[smhd]\s*)+$")
_DURATION_PART = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


PHONE_CHANNELS = ("sms", "whatsapp", "voice")
"""Channels whose address is an E.164 phone number: one number is one person on all three."""


def parse_duration(value: Any) -> timedelta:
    """``"90s"`` → 90 seconds, ``"1h30m"`` → 90 minutes. Accepts a timedelta unchanged."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError('a duration is a string like "90s", "15m", "1h30m" or "2d"')
    if not _DURATION.match(value):
        raise ValueError(f'{value!r} is not a duration like "90s", "15m", "1h30m" or "2d"')
    return timedelta(seconds=sum(int(n) * _UNITS[unit]
                                 for n, unit in _DURATION_PART.findall(value)))


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


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    """A relative path is taken from the config file's folder (the validation context's
    ``base_dir``, given by the loader), never from wherever a command happens to run."""
    base = (info.context or {}).get("base_dir")
    if not value or base is None:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


ConfigPath = Annotated[str, AfterValidator(_relative_to_config)]
"""A file or folder named in the config: a relative one is relative to the config file's folder."""

_CHANNEL_NAME = re.compile(r"^[a-z][a-z_]{0,31}$")


def _channel_name(value: str) -> str:
    if not _CHANNEL_NAME.match(value):
        raise ValueError(f"{value!r} is not a channel name (like sms or telegram)")
    return value


ChannelName = Annotated[str, AfterValidator(_channel_name)]
"""A customer channel's name, as conversations and identities carry it (``email``, ``sms``).
Which names exist is known where the channels are composed
(:mod:`frontdesk.daemon.process.registry`), which checks them."""
CHAT_TEMPLATES = "chat"
"""The template key for every channel but email."""


def _base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with https:// (or http://)")
    return value.rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_base_url)]
"""An API's base URL (``https://api.example.com``), without a trailing slash."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, hide_input_in_errors=True)


class DatabaseConfig(Section):
    """The store. The pool and timeout keys apply to PostgreSQL; SQLite ignores them."""

    url: str = "sqlite+aiosqlite:///./frontdesk.db"
    sqlite_synchronous: Literal["full", "normal"] = "full"
    leader_heartbeat: Duration = timedelta(seconds=2)
    """Several instances on PostgreSQL: how often the instance that runs a single consumer
    (IMAP polling, Telegram getUpdates) checks its leader lock connection; also the time that
    check may take before the instance stops the consumer and gives up leadership."""
    leader_retry: Duration = timedelta(seconds=2)
    """How often a standby instance tries to take a free leader lock (with a growing backoff
    while PostgreSQL cannot be reached)."""
    pool_size: int = Field(default=10, ge=1, le=1000)
    """Connections kept open to PostgreSQL."""
    max_overflow: int = Field(default=5, ge=0, le=1000)
    """Extra connections opened beyond pool_size under load, closed when returned."""
    pool_timeout: Duration = timedelta(seconds=10)
    """How long a caller waits for a free connection before failing (SMTP 451, HTTP 503)."""
    statement_timeout: Delay = timedelta(seconds=30)
    """PostgreSQL cancels a statement running longer ("0s": frontdesk sets none)."""
    connect_timeout: Duration = timedelta(seconds=5)
    """How long opening a connection (TCP and the start-up exchange) may take."""
    pool_recycle: Duration = timedelta(minutes=30)
    """Connections older than this are replaced (before firewalls or PgBouncer cut them)."""

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str, info: ValidationInfo) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "use sqlite+aiosqlite:///path/to/frontdesk.db or postgresql+asyncpg://user@host/db"
            )
        prefix = "sqlite+aiosqlite:///"
        if value.startswith(prefix):  # a file: relative to the config file's folder
            path, query = value[len(prefix):].partition("?")[::2]
            if path and path != ":memory:":
                path = _relative_to_config(path, info)
                value = prefix + path + (f"?{query}" if query else "")
        return value


class HttpConfig(Section):
    listen: Listen = "127.0.0.1:8080"
    public_url: str = ""
    # Connection limits (issue 14). Over the per-client cap a new connection is closed at once
    # (503); at the total cap the longest-idle connection waiting for a request makes room, or
    # the newcomer is closed when every connection is busy.
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_client: int = Field(default=100, ge=1)
    # A request's headers must all arrive within this, counted from the connection's opening
    # (first request) or from the first byte of a later one; never counted while a response is
    # being sent, however long it streams (Server-Sent Events).
    header_timeout: Duration = timedelta(seconds=10)
    # An open connection may sit idle between two requests this long; longer than a reverse
    # proxy's upstream keep-alive (nginx: 60 s), so the proxy never reuses a closed connection.
    keepalive_timeout: Duration = timedelta(seconds=75)
    # Receiving a request's body, from its headers on; over it the client gets 408.
    body_timeout: Duration = timedelta(seconds=60)
    # Reverse proxies (addresses or CIDR networks): not held to the per-client cap, and the only
    # peers whose X-Forwarded-For is believed.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http://)")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        out = []
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or a network like "
                                 '"10.0.0.0/8"') from None
            out.append(item.strip())
        return out


class SlackRoute(Section):
    """One ``[[slack.routes]]`` rule: conversations that match go to ``channel_id``.

    Every condition a rule names must match (a list matches when any of its items does); the
    first matching rule wins; no match sends the conversation to ``slack.channel_id``.
    """

    channel_id: str
    customer_channels: list[Literal["email", "sms", "whatsapp", "voice", "telegram"]] = Field(
        default_factory=list)
    inbox_addresses: list[EmailAddress] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    contact_tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_a_condition(self) -> SlackRoute:
        if not (self.customer_channels or self.inbox_addresses or self.keywords
                or self.contact_tags):
            raise ValueError("a route needs at least one of customer_channels, inbox_addresses, "
                             "keywords, contact_tags")
        return self


class SlackConfig(Section):
    bot_token: SecretStr = SecretStr("")
    signing_secret: SecretStr = SecretStr("")
    channel_id: str = ""
    mode: Literal["http", "socket"] = "http"
    app_token: SecretStr = SecretStr("")
    api_base_url: str = "https://slack.com/api/"
    replies_enabled: bool = True
    post_interval: Delay = timedelta(seconds=1)
    routes: list[SlackRoute] = Field(default_factory=list)
    upload_max: int = Field(default=10 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    """A customer's file larger than this (bytes) is not uploaded into the thread: its name and
    size are shown instead (0: no uploads)."""
    download_max: int = Field(default=100 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """The largest file staff attach to a thread reply that frontdesk fetches from Slack to send
    (each channel's own, smaller limits apply when it is sent)."""

    @field_validator("api_base_url")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http://)")
        return value if value.endswith("/") else value + "/"

    def missing(self) -> str | None:
        """Why the desk cannot run with these settings (a key that is not set), or None."""
        if not self.bot_token.get_secret_value():
            return "slack.bot_token is not set"
        if not self.channel_id:
            return "slack.channel_id is not set (the channel for conversations, like C0123456789)"
        if self.mode == "http" and not self.signing_secret.get_secret_value():
            return 'slack.signing_secret is not set (mode = "http" checks every request with it)'
        if self.mode == "socket" and not self.app_token.get_secret_value():
            return 'slack.app_token is not set (mode = "socket" connects with this xapp- token)'
        return None


_RATE = re.compile(r"^(\d+)/(\d+[smhd])$")


def _rate_limit(value: str) -> str:
    m = _RATE.match(value.strip())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f'{value!r} is not a rate like "10/10m"')
    parse_duration(m.group(2))
    return value.strip()


RateLimit = Annotated[str, AfterValidator(_rate_limit)]
"""A rate like ``"10/10m"``: at most 10 in any 10 minutes."""


def parse_rate(value: str) -> tuple[int, timedelta]:
    """``"10/10m"`` → (10, 10 minutes)."""
    m = _RATE.match(value.strip())
    if not m:
        raise ValueError(f'{value!r} is not a rate like "10/10m"')
    return int(m.group(1)), parse_duration(m.group(2))


WebhookEvent = Literal["conversation.created", "message.received", "message.sent",
                       "conversation.resolved", "sla.warning", "sla.escalated", "rating.received"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = get_args(WebhookEvent)
"""The events an outgoing webhook can subscribe to (CONTRACT.md, "REST API and outgoing
webhooks")."""

_WEBHOOK_SECRET = re.compile(r"^whsec_([A-Za-z0-9+/]+={0,2})$")


class ApiConfig(Section):
    """``[api]``: the REST API under ``/api/v1`` on ``http.listen`` (tokens from
    ``frontdesk token create``)."""

    enabled: bool = False
    rate_limit: RateLimit = "600/1m"
    """Requests per token (each instance counts its own): past it, 429 with Retry-After."""
    max_body: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    """The largest request body in bytes (413 past it)."""
    idempotency_window: Duration = timedelta(hours=24)
    """How long a POST's ``Idempotency-Key`` and its first answer are kept."""


class DashboardConfig(Section):
    """``[dashboard]``: the team lead's page at ``/dashboard`` on ``http.listen`` (sign in with a
    token from ``frontdesk token create``, any scope)."""

    enabled: bool = True
    session_lifetime: Duration = timedelta(hours=12)
    """How long a sign-in lasts (revoking the token ends it at once)."""
    session_secret: SecretStr = SecretStr("")
    """Signs the session cookies. Empty: a random key per process, so a restart signs everyone
    out; give every instance the same one (32+ random characters) to keep sessions across
    restarts and instances."""


_WEEKDAY = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[str, ...] = get_args(_WEEKDAY)
_SLACK_CHANNEL = re.compile(r"^[A-Z0-9]{2,32}$")
_CLOCK_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class DigestConfig(Section):
    """``[digest]``: once a week, the last 7 days' figures posted in a Slack channel (through
    the Slack desk, so it needs ``[slack]``)."""

    channel: str = ""
    """The Slack channel's id (``C0123456789``, not ``#name``); empty: no digest."""
    day: _WEEKDAY = "monday"
    time: str = "09:00"
    """``HH:MM`` on ``day``, in ``sla.timezone``."""

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        value = value.strip()
        if value and not _SLACK_CHANNEL.match(value):
            raise ValueError(f"{value!r} is not a Slack channel id like C0123456789 (the id "
                             "from the channel's details, not its #name)")
        return value

    @field_validator("time")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _CLOCK_TIME.match(value.strip()):
            raise ValueError(f'{value!r} is not a time like "09:00" (24-hour HH:MM)')
        return value.strip()

    @property
    def weekday(self) -> int:
        """Monday 0 ... Sunday 6."""
        return WEEKDAYS.index(self.day)

    @property
    def hour_minute(self) -> tuple[int, int]:
        hour, minute = self.time.split(":")
        return int(hour), int(minute)


class WebhookConfig(Section):
    """One ``[[webhooks]]`` receiver: signed per the Standard Webhooks specification, delivered
    through the outbox in a lane of its own."""

    url: str
    secret: SecretStr
    events: list[WebhookEvent] = Field(default_factory=lambda: list(WEBHOOK_EVENTS))
    name: str = ""
    """How the outbox, the metrics and the logs name this receiver (default: the URL's host);
    the lane its deliveries queue in, so keep it when the URL changes."""
    timeout: Duration = timedelta(seconds=10)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.strip()

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        m = _WEBHOOK_SECRET.match(value.get_secret_value().strip())
        if not m:
            raise ValueError('must be a Standard Webhooks secret: "whsec_" and the key in base64')
        try:
            key = base64.b64decode(m.group(1), validate=True)
        except ValueError:
            raise ValueError('the part after "whsec_" is not base64') from None
        if len(key) < 24:
            raise ValueError("the key is too short: at least 24 bytes (32 recommended)")
        return SecretStr(value.get_secret_value().strip())

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_.-]{1,24}", value):
            raise ValueError(f"{value!r}: letters, digits, '.', '-' and '_', at most 24")
        return value

    @property
    def receiver(self) -> str:
        """The receiver's name: ``name``, else the URL's host (cut to 24 characters)."""
        return self.name or (urlsplit(self.url).hostname or "webhook")[:24]


class MessageTemplate(Section):
    """One automatic message (acknowledgement, survey, reminder) for one channel and language:
    ``subject`` (email only) and ``text`` with placeholders like ``{reference}``."""

    subject: str = ""
    text: str


_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")

TemplateTable = dict[str, dict[str, MessageTemplate]]
"""``[<kind>.templates.<channel>.<language>]``: channel is a customer channel or ``chat`` (every
channel but email); language like ``en`` or ``de-at``."""


TemplateCheck = Callable[[str, str, str, str, str], None]
"""``check(kind, channel, language, subject, text)`` raises ValueError for a template that cannot
work (an unknown placeholder, an SMS text too long). The wording is the domain's, so the check is
handed in by whoever loads the settings (:func:`frontdesk.config.loader.load_settings`) as the
validation context ``{"check_template": check}``."""


def _check_templates(kind: str, value: TemplateTable, info: ValidationInfo) -> TemplateTable:
    check: TemplateCheck | None = (info.context or {}).get("check_template")
    out: TemplateTable = {}
    for channel, languages in value.items():
        if not _CHANNEL_NAME.match(channel):
            raise ValueError(f"templates.{channel}: not a channel")
        out[channel] = {}
        for language, template in languages.items():
            code = language.strip().lower().replace("_", "-")
            if not _LANGUAGE.match(code):
                raise ValueError(f"templates.{channel}.{language}: not a language code like "
                                 '"en" or "de-at"')
            if check is not None:
                try:
                    check(kind, channel, code, template.subject, template.text)
                except ValueError as exc:
                    raise ValueError(f"templates.{channel}.{language}: {exc}") from None
            out[channel][code] = template
    return out


class AcknowledgementConfig(Section):
    enabled: bool = True
    delay: Delay = timedelta(0)
    rate_limits: list[RateLimit] = Field(
        default_factory=lambda: ["10/10m", "15/30m", "25/1h", "50/3h", "100/10h"]
    )
    global_rate_limits: list[RateLimit] = Field(
        default_factory=lambda: ["500/10m", "2000/1h"]
    )
    """Caps on all acknowledgements together, whoever they go to: forged senders spread over
    many addresses (or SMS numbers) each stay under the per-recipient limits."""
    templates: TemplateTable = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: TemplateTable, info: ValidationInfo) -> TemplateTable:
        return _check_templates("acknowledgement", value, info)


class SurveyConfig(Section):
    """The satisfaction survey after a conversation is resolved ("How did we do? Reply 1-5")."""

    enabled: bool = True
    delay: Delay = timedelta(hours=1)
    window: Duration = timedelta(days=7)
    low_score: int = Field(default=2, ge=0, le=5)
    templates: TemplateTable = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: TemplateTable, info: ValidationInfo) -> TemplateTable:
        return _check_templates("survey", value, info)


class ReminderConfig(Section):
    """One reminder to a customer who has not answered a pending conversation."""

    enabled: bool = True
    after: Duration = timedelta(days=3)
    templates: TemplateTable = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: TemplateTable, info: ValidationInfo) -> TemplateTable:
        return _check_templates("reminder", value, info)


class SchedulerConfig(Section):
    """The scheduler's sweeps over due times (acknowledgements, escalations, surveys, snoozes)."""

    enabled: bool = True
    interval: Duration = timedelta(seconds=30)
    batch_size: int = Field(default=200, ge=1, le=10000)
    default_language: str = "en"

    @field_validator("default_language")
    @classmethod
    def _language(cls, value: str) -> str:
        code = value.strip().lower().replace("_", "-")
        if not _LANGUAGE.match(code):
            raise ValueError('not a language code like "en" or "de-at"')
        return code


class ConversationConfig(Section):
    reopen_window: Duration = timedelta(days=7)


OUTBOX_LEASE_MIN = timedelta(seconds=30)


class DaemonConfig(Section):
    shutdown_timeout: Duration = timedelta(seconds=25)
    data_dir: ConfigPath = "./frontdesk-data"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    """``json``: one object per line (time, level, logger, message, extra fields) for log
    shippers."""
    outbox_poll: Duration = timedelta(seconds=1)
    outbox_retry_initial: Duration = timedelta(seconds=30)
    outbox_retry_max: Duration = timedelta(hours=1)
    outbox_max_attempts: int = Field(default=12, ge=1)
    outbox_lease: Duration = timedelta(minutes=2)
    """Several instances on PostgreSQL: how long an instance's claim on an outbox row holds
    while it sends; a row claimed by an instance that died is sent by another after this."""

    @field_validator("outbox_lease")
    @classmethod
    def _lease(cls, value: timedelta) -> timedelta:
        if value < OUTBOX_LEASE_MIN:
            raise ValueError(f'must be at least "{format_duration(OUTBOX_LEASE_MIN)}": longer '
                             "than any send takes (an SMTP relay's timeout is 30s per step)")
        return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known time zone (like Europe/London)") from None
    return value


def _business_hours(value: str) -> str:
    parse_business_hours(value)
    return value


_PRIORITY_NAMES = Literal["low", "normal", "high", "urgent"]


class SlaPolicy(Section):
    """One ``[[sla.policies]]`` entry: targets for the conversations it matches.

    Every condition it names must match (a list matches when any of its items does); the first
    matching policy wins; a target it leaves out comes from ``[sla]``.
    """

    name: str
    channels: list[ChannelName] = Field(default_factory=list)
    priorities: list[_PRIORITY_NAMES] = Field(default_factory=list)
    contact_tags: list[str] = Field(default_factory=list)
    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError("a policy name is 1-64 letters, digits, '.', '-' and '_'")
        return value

    @model_validator(mode="after")
    def _has_a_target(self) -> SlaPolicy:
        if self.first_response is None and self.next_response is None \
                and self.resolution is None:
            raise ValueError(f"policy {self.name!r} sets no target (first_response, "
                             "next_response or resolution)")
        return self


class SlaConfig(Section):
    first_response: Duration = timedelta(hours=1)
    next_response: Duration | None = None
    """After each later customer message while the team owes an answer; unset: first_response."""
    resolution: Duration | None = None
    """From the first customer message to resolved; unset: no resolution target."""
    warn_before: Delay = timedelta(minutes=15)
    """An "SLA warning" in the Slack thread this much business time before a breach; "0s": none."""
    warn_mention: str = ""
    timezone: Annotated[str, AfterValidator(_timezone)] = "Europe/London"
    business_hours: Annotated[str, AfterValidator(_business_hours)] = "always"
    holidays_country: str = ""
    holidays: list[date] = Field(default_factory=list)
    policies: list[SlaPolicy] = Field(default_factory=list)

    @field_validator("warn_mention")
    @classmethod
    def _warn_mention(cls, value: str) -> str:
        return _mention(value)

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, value: list[SlaPolicy]) -> list[SlaPolicy]:
        seen: set[str] = set()
        for policy in value:
            if policy.name in seen:
                raise ValueError(f"two policies are called {policy.name!r}")
            seen.add(policy.name)
        return value

    @field_validator("holidays_country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value:
            import holidays

            if value.upper() not in holidays.list_supported_countries():
                raise ValueError(f"{value!r} is not a country code the holidays package knows")
        return value.upper()


def _mention(value: str) -> str:
    """A Slack mention: a user (U0123...), a user group (S0123...), "here" or "channel"."""
    value = value.strip()
    bare = value.lstrip("@!")
    if not value:
        return ""
    if bare.lower() in ("here", "channel", "everyone"):
        return "@" + bare.lower()
    if re.fullmatch(r"[UW][A-Z0-9]{2,}", bare) or re.fullmatch(r"S[A-Z0-9]{2,}", bare):
        return bare
    raise ValueError(f"{value!r} is not a Slack mention: a user id (U0123ABCD), a user group id "
                     '(S0123ABCD), "@here" or "@channel"')


_NOTIFY = Literal["slack", "channel", "email", "sms"]


def _notify_list(value: Any) -> Any:
    if isinstance(value, str):
        return [value] if value.strip() else []
    return value


def _phone(value: str) -> str:
    value = re.sub(r"[\s().-]", "", value)
    if value and not re.fullmatch(r"\+[1-9]\d{6,14}", value):
        raise ValueError(f"{value!r} is not a phone number in E.164 form (+15550001111)")
    return value


class EscalationLevel(Section):
    """One ``[[escalation]]`` level. ``after`` is business time past the due time ("0s": at the
    breach); ``notify`` lists where it goes: ``slack`` (the conversation's thread), ``channel``
    (``channel_id``, a managers' channel), ``email`` and ``sms`` (a person on call)."""

    after: Delay = timedelta(hours=1)
    notify: Annotated[list[_NOTIFY], BeforeValidator(_notify_list)] = Field(
        default_factory=lambda: list[_NOTIFY](["slack"]))
    mention: Annotated[str, AfterValidator(_mention)] = ""
    channel_id: str = ""
    email: str = ""
    sms: Annotated[str, AfterValidator(_phone)] = ""
    raise_priority: bool | _PRIORITY_NAMES = False

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _email_address(value) if value.strip() else ""

    @model_validator(mode="after")
    def _targets(self) -> EscalationLevel:
        targets: tuple[tuple[_NOTIFY, str, str], ...] = (
            ("channel", self.channel_id, "channel_id"), ("email", self.email, "email"),
            ("sms", self.sms, "sms"))
        for target, address, key in targets:
            if target in self.notify and not address:
                raise ValueError(f'notify includes "{target}" but {key} is not set')
            if address and target not in self.notify:
                self.notify.append(target)
        return self


def _tag(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_:-]{1,50}", value):
        raise ValueError(f"{value!r} is not a tag: 1-50 lower-case letters, digits, -, _ and :")
    return value


class TagRule(Section):
    """One ``[[tag_rules]]`` entry: a new conversation that matches gets ``tags``.

    The conditions are those of ``[[slack.routes]]`` (every condition named must match, a list
    matches when any of its items does); unlike routes, every matching rule applies.
    """

    tags: list[Annotated[str, AfterValidator(_tag)]] = Field(min_length=1)
    customer_channels: list[ChannelName] = Field(default_factory=list)
    inbox_addresses: list[EmailAddress] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    contact_tags: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_a_condition(self) -> TagRule:
        if not (self.customer_channels or self.inbox_addresses or self.keywords
                or self.contact_tags):
            raise ValueError("a tag rule needs at least one of customer_channels, "
                             "inbox_addresses, keywords, contact_tags")
        return self


def _reply_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ValueError(f"{value!r}: a saved reply's name is letters, digits, - and _")
    return value.lower()


class CoreSettings(Section):
    """The configuration of the core: everything but the customer channels' own sections (which
    their packages own; :mod:`frontdesk.daemon.process.registry` puts the whole together)."""

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    slack: SlackConfig = Field(default_factory=SlackConfig)
    acknowledgement: AcknowledgementConfig = Field(default_factory=AcknowledgementConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    sla: SlaConfig = Field(default_factory=SlaConfig)
    escalation: list[EscalationLevel] = Field(default_factory=lambda: [EscalationLevel()])
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    survey: SurveyConfig = Field(default_factory=SurveyConfig)
    reminder: ReminderConfig = Field(default_factory=ReminderConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    digest: DigestConfig = Field(default_factory=DigestConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    saved_replies: dict[Annotated[str, AfterValidator(_reply_name)], str] = Field(
        default_factory=dict)
    """Answers a team gives every day, by name: ``refund = "Hi {name}, ..."`` (see
    :func:`frontdesk.domain.conversations.render_saved_reply` for the placeholders)."""
    tag_rules: list[TagRule] = Field(default_factory=list)
    """Tags a new conversation gets by its channel, inbox address, keywords or contact tags."""

    @field_validator("webhooks")
    @classmethod
    def _receivers_apart(cls, value: list[WebhookConfig]) -> list[WebhookConfig]:
        seen: set[str] = set()
        for hook in value:
            if hook.receiver in seen:
                raise ValueError(f"two receivers are named {hook.receiver!r}: give each a "
                                 "name of its own (name = ...)")
            seen.add(hook.receiver)
        return value

    @field_validator("escalation")
    @classmethod
    def _levels_in_order(cls, value: list[EscalationLevel]) -> list[EscalationLevel]:
        for number in range(2, len(value) + 1):
            earlier, later = value[number - 2], value[number - 1]
            if later.after < earlier.after:
                raise ValueError(f"level {number} comes before level {number - 1}: each level's "
                                 "after (past the due time) must be at least the one before")
        return value
