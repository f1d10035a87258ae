"""The company website: a live chat widget (channel ``web``) and a contact form (``form``).

This module declares the channel: its config section ``[web]`` (:class:`WebConfig`), which
builds it. Nothing beyond aiohttp (the daemon's own HTTP server) is needed: the widget is a
plain JavaScript file shipped in the package (``static/widget.js``), the pages are rendered
here. A contact form's replies go out by email (:meth:`WebConfig.replies_via`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.config.schema import CoreSettings, Duration, RateLimit


def web_origin(value: str) -> str:
    """``https://www.Example.com/`` → ``https://www.example.com`` (scheme, host, port only);
    ValueError for anything that is no http(s) origin."""
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin like https://www.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r}: an origin has no path, query or user "
                         "(https://www.example.com)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has no valid port") from None
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


class WebConfig(ChannelSection):
    """``[web]``: the chat widget and the contact form, served on ``http.listen``."""

    channel_names = ("web", "form")

    enabled: bool = False
    allowed_origins: list[str] = Field(default_factory=list)
    title: str = Field(default="Support", min_length=1, max_length=80)
    ask_email: Literal["required", "optional", "off"] = "optional"
    offline_email_after: Duration = timedelta(minutes=5)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024)
    # Per visitor (their browser's token), per client address (the connecting IP, or the
    # X-Forwarded-For of a trusted proxy), and for the contact form per address.
    visitor_rate_limits: list[RateLimit] = Field(default_factory=lambda: ["20/1m", "200/1h"])
    address_rate_limits: list[RateLimit] = Field(default_factory=lambda: ["60/1m", "600/1h"])
    form_rate_limits: list[RateLimit] = Field(default_factory=lambda: ["5/10m", "20/1d"])
    max_message_chars: int = Field(default=10_000, ge=100, le=100_000)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [web_origin(item) for item in value]

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in value):
            raise ValueError("the title is one line of text without control characters")
        return value.strip() or "Support"

    def replies_via(self) -> Mapping[str, str]:
        return {"form": "email"}

    def build(self, core: CoreSettings) -> list[Channel | str]:
        if not self.enabled:
            return ["web channel (chat widget, contact form) disabled: web.enabled is false"]
        from frontdesk.channels.web.channel import WebChannel

        return [WebChannel(self, http=core.http)]
