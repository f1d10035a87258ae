"""frontdesk's own Message-IDs: made so that mail of ours that comes back is recognised.

Every mail frontdesk sends (staff replies, acknowledgements, verification codes) gets a
Message-ID ``<digits.digits.digits.frontdesk@DOMAIN>``, DOMAIN being the domain of
``email.outbound.from``. A mail that arrives carrying such a Message-ID is our own mail looping
back (an auto-forward, a misrouted copy) and is treated as automated.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import make_msgid

MARKER = "frontdesk"


def new_message_id(domain: str | None) -> str:
    """A fresh Message-ID of ours, without the angle brackets."""
    return make_msgid(idstring=MARKER, domain=domain or None).strip("<>")


def is_own_message_id(msgid: str, domains: Iterable[str]) -> bool:
    """True for a Message-ID that frontdesk made for one of ``domains``."""
    local, at, domain = msgid.strip().strip("<>").rpartition("@")
    if not at:
        return False
    wanted = {d.strip().lower() for d in domains if d.strip()}
    return local.endswith("." + MARKER) and domain.lower() in wanted
