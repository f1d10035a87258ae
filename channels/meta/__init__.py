"""Meta: Facebook Messenger, Instagram Direct and the WhatsApp Cloud API (channels
``messenger``, ``instagram`` and ``whatsapp``), one webhook for all three.

This module declares the channel: its config section ``[meta]`` (:class:`MetaConfig`), which
builds it. It needs no SDK: the Graph API is plain HTTPS (aiohttp, the daemon's own). Each
product runs when its keys are set; for each that is not, the daemon logs one line naming the
missing key.
"""

from __future__ import annotations

import re
from datetime import timedelta

from pydantic import Field, SecretStr, field_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.config.schema import BaseUrl, CoreSettings, Duration, Section

WINDOW = timedelta(hours=24)
"""The messaging window of all three products: free-form replies within 24 hours of the
customer's last message."""
HUMAN_AGENT_WINDOW = timedelta(days=7)
"""Messenger's and Instagram's window for a reply tagged HUMAN_AGENT (a permission Meta
grants)."""


class WhatsAppTemplate(Section):
    """``[meta.whatsapp_template]``: the approved template that re-opens a closed WhatsApp
    window ("We have an answer to your request {reference}; reply to see it")."""

    name: str = ""
    language: str = "en"
    parameters: list[str] = Field(default_factory=lambda: ["{reference}"])
    """The body's parameters, in order; placeholders: ``{reference}``, ``{name}``,
    ``{first_name}``, ``{subject}``."""

    @field_validator("parameters")
    @classmethod
    def _placeholders(cls, value: list[str]) -> list[str]:
        allowed = {"reference", "name", "first_name", "subject"}
        for item in value:
            for found in re.findall(r"{([^{}]*)}", item):
                if found not in allowed:
                    raise ValueError(f"unknown placeholder {{{found}}} (use "
                                     + ", ".join("{" + a + "}" for a in sorted(allowed)) + ")")
        return value


class MetaConfig(ChannelSection):
    """``[meta]``: a Meta app's webhook and the Graph API."""

    channel_names = ("messenger", "instagram", "whatsapp")

    app_secret: SecretStr = SecretStr("")
    verify_token: str = ""
    api_base_url: BaseUrl = "https://graph.facebook.com"
    api_version: str = "v21.0"
    page_id: str = ""
    page_access_token: SecretStr = SecretStr("")
    instagram_account_id: str = ""
    whatsapp_phone_number_id: str = ""
    whatsapp_access_token: SecretStr = SecretStr("")
    human_agent_tag: bool = False
    whatsapp_template: WhatsAppTemplate = Field(default_factory=WhatsAppTemplate)
    request_timeout: Duration = timedelta(seconds=15)

    @field_validator("api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"v\d{1,3}\.\d{1,2}", value.strip()):
            raise ValueError('a Graph API version like "v21.0"')
        return value.strip()

    @field_validator("page_id", "instagram_account_id", "whatsapp_phone_number_id")
    @classmethod
    def _ids(cls, value: str) -> str:
        if value.strip() and not re.fullmatch(r"[0-9A-Za-z_]{1,64}", value.strip()):
            raise ValueError("a Meta id: digits (as Meta shows it)")
        return value.strip()

    def products(self) -> tuple[list[str], list[str]]:
        """(the products whose keys are set, one line per product that is off and why)."""
        on: list[str] = []
        off: list[str] = []
        page = bool(self.page_id and self.page_access_token.get_secret_value())
        if page:
            on.append("messenger")
        else:
            off.append("meta messenger disabled: meta.page_id and meta.page_access_token are "
                       "not set")
        if page and self.instagram_account_id:
            on.append("instagram")
        elif not self.instagram_account_id:
            off.append("meta instagram disabled: meta.instagram_account_id is not set")
        else:
            off.append("meta instagram disabled: it replies through the linked page: "
                       "meta.page_id and meta.page_access_token are not set")
        if self.whatsapp_phone_number_id and self.whatsapp_access_token.get_secret_value():
            on.append("whatsapp")
        else:
            off.append("meta whatsapp disabled: meta.whatsapp_phone_number_id and "
                       "meta.whatsapp_access_token are not set")
        return on, off

    def build(self, core: CoreSettings) -> list[Channel | str]:
        on, off = self.products()
        if not on:
            return ["meta channel (messenger, instagram, whatsapp) disabled: no product's keys "
                    "are set (meta.page_id with meta.page_access_token, "
                    "meta.whatsapp_phone_number_id with meta.whatsapp_access_token)"]
        if not self.app_secret.get_secret_value():
            return ["meta channel (messenger, instagram, whatsapp) disabled: meta.app_secret is "
                    "not set (every webhook's signature is checked with it)"]
        if not self.verify_token:
            return ["meta channel (messenger, instagram, whatsapp) disabled: meta.verify_token "
                    "is not set (Meta's subscription handshake asks for it)"]
        from frontdesk.channels.meta.channel import MetaChannel

        return [MetaChannel(self, products=tuple(on)), *off]
