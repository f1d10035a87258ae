"""Telegram: a bot that customers message."""
