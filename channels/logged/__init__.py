"""Contacts staff take themselves — by phone, in person, by letter — as conversations on the
channels ``phone``, ``in_person`` and ``letter``.

This module declares the channel: its config section ``[logged]`` (:class:`LoggedConfig`), which
has no keys and is always on. A contact comes in through
:class:`~frontdesk.channels.logged.intake.Intake` (``POST /api/v1/inbound``, the Slack form) or
``frontdesk log``; it is journaled like any message, then acknowledged, timed and mirrored to
Slack like any other conversation. Replies go by email to the address given, else by SMS to the
number given (:data:`~frontdesk.domain.replies.REPLY_VIA`); with neither, a staff reply is kept
as a note and the customer must be called back.
"""

from __future__ import annotations

from frontdesk.channels.base import Channel, ChannelSection
from frontdesk.channels.logged.contact import LOGGED_CHANNELS
from frontdesk.config.schema import CoreSettings


class LoggedConfig(ChannelSection):
    """``[logged]``: contacts staff took by phone, in person or by letter (no keys: always on)."""

    channel_names = LOGGED_CHANNELS

    def build(self, core: CoreSettings) -> list[Channel | str]:
        from frontdesk.channels.logged.channel import LoggedChannel

        return [LoggedChannel()]
