"""Telegram: a bot that customers message.

This module declares the channel: its config section ``[telegram]`` (:class:`TelegramConfig`),
which builds it; python-telegram-bot (the ``frontdesk[telegram]`` extra) is imported only when
it runs.
"""

from __future__ import annotations

import importlib.util
import re
from datetime import timedelta
from typing import Literal

from pydantic import SecretStr, field_validator

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.config.schema import BaseUrl, CoreSettings, Duration


class TelegramConfig(ChannelSection):
    """``[telegram]``: a bot, by polling or by webhook."""

    channel_names = ("telegram",)

    bot_token: SecretStr = SecretStr("")
    api_base_url: BaseUrl = "https://api.telegram.org"
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret: SecretStr = SecretStr("")
    greeting: str = ("Hello! Write your question here and our support team will answer you in "
                     "this chat.")
    poll_timeout: Duration = timedelta(seconds=30)
    request_timeout: Duration = timedelta(seconds=15)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_token(cls, value: SecretStr) -> SecretStr:
        # Telegram's secret_token: 1-256 characters, A-Z, a-z, 0-9, _ and -.
        if value.get_secret_value() and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}",
                                                         value.get_secret_value()):
            raise ValueError("use 1 to 256 characters of A-Z, a-z, 0-9, _ and - "
                             "(Telegram's rule for secret_token)")
        return value

    def build(self, core: CoreSettings) -> list[Channel | str]:
        disabled = "telegram channel disabled: "
        if not self.bot_token.get_secret_value():
            return [disabled + "telegram.bot_token is not set"]
        if importlib.util.find_spec("telegram") is None:
            return [disabled + ("python-telegram-bot is not installed "
                                "(pip install 'frontdesk[telegram]')")]
        if self.mode == "webhook":
            if not core.http.public_url:
                return [disabled + 'telegram.mode is "webhook" but http.public_url is not set']
            if not self.webhook_secret.get_secret_value():
                return [disabled + ('telegram.mode is "webhook" but telegram.webhook_secret is '
                                    "not set (it proves a webhook call comes from Telegram)")]
        from frontdesk.channels.telegram.channel import TelegramChannel

        return [TelegramChannel(self, public_url=core.http.public_url)]
