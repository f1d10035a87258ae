"""The registry: every channel frontdesk has, as a section of the whole configuration.

A customer channel is its package under ``channels/`` plus one line here: its section model (a
:class:`~frontdesk.channels.base.ChannelSection`) as a field of :class:`Settings`. The daemon
builds every channel from these sections (:func:`build_channels`), and the reply composer takes
each section's threading (:func:`reply_composer`).
"""

from __future__ import annotations

from email.utils import parseaddr

from pydantic import Field, model_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.channels.email import EmailConfig
from frontdesk.channels.logged import LoggedConfig
from frontdesk.channels.meta import MetaConfig
from frontdesk.channels.telegram import TelegramConfig
from frontdesk.channels.twilio import TwilioConfig
from frontdesk.channels.web import WebConfig
from frontdesk.config.schema import CHAT_TEMPLATES, CoreSettings
from frontdesk.domain.replies import ReplyComposer, Threading


class Settings(CoreSettings):
    """The whole configuration: the core's sections and one section per customer channel."""

    email: EmailConfig = Field(default_factory=EmailConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    logged: LoggedConfig = Field(default_factory=LoggedConfig)


    @model_validator(mode="after")
    def _known_channels(self) -> Settings:
        known = customer_channels(self)
        for kind, tables in (("acknowledgement", self.acknowledgement.templates),
                             ("survey", self.survey.templates),
                             ("reminder", self.reminder.templates)):
            for channel in tables:
                if channel != CHAT_TEMPLATES and channel not in known:
                    raise ValueError(f"{kind}.templates.{channel}: not a channel "
                                     f"({', '.join((*known, CHAT_TEMPLATES))})")
        for number, policy in enumerate(self.sla.policies):
            for channel in policy.channels:
                if channel not in known:
                    raise ValueError(f"sla.policies[{number}].channels: {channel!r} is not a "
                                     f"channel ({', '.join(known)})")
        return self


def customer_channels(settings: Settings) -> tuple[str, ...]:
    """Every customer channel name this installation knows (whether or not it runs)."""
    return tuple(dict.fromkeys(name for section in channel_sections(settings).values()
                               for name in section.channel_names))


def channel_sections(settings: Settings) -> dict[str, ChannelSection]:
    """The channel sections by config key, in the order they are declared."""
    return {key: value for key, value in settings if isinstance(value, ChannelSection)}


def build_channels(settings: Settings) -> tuple[list[Channel], list[str]]:
    """The channels that can run, and one line per one that cannot, saying why (no secrets)."""
    channels: list[Channel] = []
    disabled: list[str] = []
    for section in channel_sections(settings).values():
        for built in section.build(settings):
            if isinstance(built, str):
                disabled.append(built)
            else:
                channels.append(built)
    return channels, disabled


def reply_composer(settings: Settings) -> ReplyComposer:
    """The composer every message to a customer goes through (staff replies, notices, codes)."""
    threading: dict[str, Threading] = {}
    via: dict[str, str] = {}
    for key, section in channel_sections(settings).items():
        if (made := section.threading()) is not None:
            threading[key] = made
        via.update(section.replies_via())
    return ReplyComposer(threading=threading, channels=frozenset(customer_channels(settings)),
                         via=via,
                         signature=parseaddr(settings.email.outbound.from_)[0]
                         or "our support team")
