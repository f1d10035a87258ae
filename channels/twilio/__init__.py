"""Twilio: SMS, MMS, WhatsApp and voicemail.

This module declares the channel: its config section ``[twilio]`` (:class:`TwilioConfig`),
which builds it; the twilio SDK (the ``frontdesk[twilio]`` extra) is imported only when it
runs.
"""

from __future__ import annotations

import importlib.util
from datetime import timedelta

from pydantic import SecretStr

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.config.schema import BaseUrl, CoreSettings, Duration


class TwilioConfig(ChannelSection):
    """``[twilio]``: SMS, WhatsApp and voicemail."""

    channel_names = ("sms", "whatsapp", "voice")

    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    sms_from: str = ""
    whatsapp_from: str = ""
    api_base_url: BaseUrl = "https://api.twilio.com"
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
