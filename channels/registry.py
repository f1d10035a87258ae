"""The customer channels frontdesk has, and what the core composes from them.

:func:`reply_composer` gives the domain's reply composer each channel's threading (today only
email threads its replies: Message-ID, In-Reply-To, References, Reply-To) and the team's name as
customers see it.
"""

from __future__ import annotations

from email.utils import parseaddr

from frontdesk.channels.email.threading import EmailThreading
from frontdesk.config.schema import Settings
from frontdesk.daemon.domain.replies import ReplyComposer


def reply_composer(settings: Settings) -> ReplyComposer:
    """The composer every message to a customer goes through (staff replies, notices, codes)."""
    return ReplyComposer(threading={"email": EmailThreading(settings.email)},
                         signature=parseaddr(settings.email.outbound.from_)[0]
                         or "our support team")
