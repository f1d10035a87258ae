"""How the scheduler words its notices to staff: Slack mentions, spans of time."""

from __future__ import annotations

from datetime import timedelta


def slack_mention(mention: str) -> str:
    """A configured mention as Slack writes it: <@U123>, <!subteam^S123>, <!here>."""
    if not mention:
        return ""
    if mention.startswith("@"):
        return f"<!{mention[1:]}>"
    if mention.startswith("S"):
        return f"<!subteam^{mention}>"
    return f"<@{mention}>"


def with_mention(text: str, mention: str) -> str:
    """``text`` followed by a Slack mention (:func:`slack_mention`), if there is one."""
    return f"{text} {mention}" if mention else text


def span(delta: timedelta) -> str:
    """A short span of time: 45s, 5m, 2h, 1h30m."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{max(1, seconds // 60)}m" if seconds >= 60 else f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if rest >= 60 else f"{hours}h"
