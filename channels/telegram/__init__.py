"""Telegram: a bot that customers message.

``from_settings`` is all the daemon imports when composing channels; python-telegram-bot is
imported only when the channel is enabled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from frontdesk.config.schema import Settings

if TYPE_CHECKING:
    from frontdesk.channels.telegram.channel import TelegramChannel

DISABLED = "telegram channel disabled: "


def from_settings(settings: Settings) -> TelegramChannel | str:
    """The channel, or the one-line reason it is disabled (never a secret)."""
    t = settings.telegram
    if not t.bot_token.get_secret_value():
        return DISABLED + "telegram.bot_token is not set"
    if t.mode == "webhook":
        if not settings.http.public_url:
            return DISABLED + 'telegram.mode is "webhook" but http.public_url is not set'
        if not t.webhook_secret.get_secret_value():
            return DISABLED + ('telegram.mode is "webhook" but telegram.webhook_secret is not '
                               "set (it proves a webhook call comes from Telegram)")
    from frontdesk.channels.telegram.channel import TelegramChannel

    return TelegramChannel(t, public_url=settings.http.public_url,
                           data_dir=settings.daemon.data_dir)
