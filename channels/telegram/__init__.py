"""Telegram: a bot that customers message.

:class:`~frontdesk.channels.telegram.settings.TelegramConfig` (``[telegram]``) builds the
channel; python-telegram-bot is imported only when it runs.
"""
