"""Twilio: SMS, MMS, WhatsApp and voicemail.

``from_settings`` is all the daemon imports when composing channels; the twilio SDK is imported
only when the channel is enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontdesk.config.schema import Settings

if TYPE_CHECKING:
    from frontdesk.channels.twilio.channel import TwilioChannel

DISABLED = "twilio channel (sms, whatsapp, voice) disabled: "


def from_settings(settings: Settings) -> TwilioChannel | str:
    """The channel, or the one-line reason it is disabled (never a secret)."""
    t = settings.twilio
    if not (t.account_sid and t.auth_token.get_secret_value()):
        return DISABLED + "twilio.account_sid and twilio.auth_token are not set"
    if not settings.http.public_url:
        return DISABLED + ("http.public_url is not set (Twilio calls it, and its webhook "
                           "signatures are checked against it)")
    from frontdesk.channels.twilio.channel import TwilioChannel

    return TwilioChannel(t, public_url=settings.http.public_url,
                         data_dir=settings.daemon.data_dir)
