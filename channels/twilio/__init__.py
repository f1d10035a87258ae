"""Twilio: SMS, MMS, WhatsApp and voicemail.

This module declares the channel: its config section ``[twilio]`` (:class:`TwilioConfig`),
which builds it; the twilio SDK (the ``frontdesk[twilio]`` extra) is imported only when it
runs.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import timedelta

from pydantic import Field, SecretStr, field_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.channels.media import normalise_patterns
from frontdesk.config.schema import BaseUrl, CoreSettings, Duration

MEDIA_HOSTS = ("*.twilio.com", "*.twiliocdn.com", "s3-external-1.amazonaws.com")
"""Where Twilio serves MMS and WhatsApp media and recordings. ``MediaUrl{i}`` and
``RecordingUrl`` name api.twilio.com (or a regional ``api.<edge>.<region>.twilio.com``), which
answers with a redirect to a short-lived URL on ``mms.twiliocdn.com`` (media behind HTTP basic
auth, now Twilio's default) or ``media.twiliocdn.com``, or, for media of accounts that never
enforced that auth, ``s3-external-1.amazonaws.com/media.twiliocdn.com/...``. Sources: Twilio's
help article "Protect Media Access with HTTP Basic Authentication for Programmable Messaging"
(support.twilio.com 223183748: the secured domain is mms.twiliocdn.com, the unsecured one
s3-external-1.amazonaws.com) and the Messaging Media resource docs (media URIs are relative to
https://api.twilio.com)."""


class TwilioConfig(ChannelSection):
    """``[twilio]``: SMS, WhatsApp and voicemail."""

    channel_names = ("sms", "whatsapp", "voice")

    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    sms_from: str = ""
    whatsapp_from: str = ""
    api_base_url: BaseUrl = "https://api.twilio.com"
    media_hosts: list[str] = Field(default_factory=lambda: list(MEDIA_HOSTS))
    """Hosts media may be fetched from besides api_base_url's own (which always may):
    ``media.example.com``, ``media.example.com:8443`` or ``*.example.com``. A host matched by a
    wildcard must resolve to public addresses; one listed literally may resolve anywhere (a
    media proxy on the local network). A MediaUrl or redirect elsewhere is not fetched."""
    webhook_signing_key: SecretStr = SecretStr("")
    help_text: str = ("You are writing to our support team: send your question and a person "
                      "will answer here. Reply STOP to stop messages, START to receive them again.")
    voice_greeting_open: str = ("Thank you for calling. Please leave a message after the tone "
                                "and we will get back to you shortly.")
    voice_greeting_closed: str = ("Thank you for calling. We are closed right now. Please leave "
                                  "a message after the tone and we will get back to you when "
                                  "we open.")
    voice_max_length: Duration = timedelta(minutes=2)
    request_timeout: Duration = timedelta(seconds=15)
    whatsapp_template_sid: str = ""
    """A Content Template (``HX...``) approved for WhatsApp: sent when a staff reply finds the
    customer's 24-hour window closed; the reply then waits until they write again."""
    whatsapp_template_variables: list[str] = Field(default_factory=lambda: ["{reference}"])
    """The template's variables 1, 2, ... in order; placeholders ``{reference}``, ``{name}``,
    ``{first_name}``, ``{subject}``."""

    @field_validator("whatsapp_template_sid")
    @classmethod
    def _content_sid(cls, value: str) -> str:
        if value.strip() and not re.fullmatch(r"HX[0-9a-fA-F]{32}", value.strip()):
            raise ValueError("a Content SID: HX and 32 hexadecimal digits")
        return value.strip()

    @field_validator("media_hosts")
    @classmethod
    def _media_hosts(cls, value: list[str]) -> list[str]:
        return normalise_patterns(value)

    def build(self, core: CoreSettings) -> list[Channel | str]:
        disabled = "twilio channel (sms, whatsapp, voice) disabled: "
        if not (self.account_sid and self.auth_token.get_secret_value()):
            return [disabled + "twilio.account_sid and twilio.auth_token are not set"]
        if importlib.util.find_spec("twilio") is None:
            return [disabled + "the twilio SDK is not installed (pip install 'frontdesk[twilio]')"]
        if not core.http.public_url:
            return [disabled + ("http.public_url is not set (Twilio calls it, and its webhook "
                                "signatures are checked against it)")]
        from frontdesk.channels.twilio.channel import TwilioChannel

        return [TwilioChannel(self, public_url=core.http.public_url)]
