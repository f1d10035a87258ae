"""A logged contact's journal row as an :class:`~frontdesk.domain.messages.InboundMessage`.
Pure: no I/O, so it can be re-run on a dead letter.

The sender is the contact's ``email`` identity when an address was given, else the ``sms``
identity of the phone number (E.164), so the contact is found or made by what staff were told;
with neither, an identity of this contact alone (``logged:<external id>`` on the logged channel).
Replies go where :data:`~frontdesk.domain.replies.REPLY_VIA` says: ``email``, ``sms``, or
nowhere (call back). Every logged contact opens a conversation of its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from frontdesk.channels.base import ParseError
from frontdesk.channels.chat import preview
from frontdesk.channels.logged.contact import LoggedContact
from frontdesk.domain.messages import InboundMessage
from frontdesk.domain.replies import REPLY_VIA

LOGGED_BY = "X-Frontdesk-Logged-By"
LOGGED_TOKEN = "X-Frontdesk-Logged-Token"
"""The API token a logged contact came through (the audit names it)."""
"""The header key of the staff member who took the contact."""
LOGGED_PHONE = "X-Frontdesk-Logged-Phone"
"""The phone number given beside an email address (the reply goes by email)."""

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def message_id(channel: str, external_id: str) -> str:
    """The stored id of a logged contact, shaped like a Message-ID (a reply by mail names it in
    In-Reply-To): ``<phone.x.CALL-42@logged.frontdesk.invalid>``, or a hash of an id that is
    not plain letters, digits, ``.``, ``_`` and ``-``."""
    if _SAFE_ID.match(external_id):
        token = "x." + external_id
    else:
        token = "h." + hashlib.sha256(external_id.encode()).hexdigest()[:40]
    return f"<{channel}.{token}@logged.frontdesk.invalid>"


def parse(raw: bytes, meta: Mapping[str, Any]) -> InboundMessage:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"not a logged contact: {exc}") from None
    if not isinstance(data, dict):
        raise ParseError("not a logged contact: not an object")
    at = data.pop("at", None)
    token = data.pop("token", None)
    try:
        item = LoggedContact.model_validate(data)
        received = datetime.fromisoformat(at) if isinstance(at, str) else None
    except (ValidationError, ValueError) as exc:
        raise ParseError(f"not a logged contact: {exc}") from None
    contact = item.contact
    headers = {LOGGED_BY: item.author}
    if isinstance(token, str) and token:
        headers[LOGGED_TOKEN] = token[:64]
    if contact.email:
        address, kind, headers[REPLY_VIA] = contact.email, "email", "email"
        if contact.phone:
            headers[LOGGED_PHONE] = contact.phone
    elif contact.phone:
        address, kind, headers[REPLY_VIA] = contact.phone, "sms", "sms"
    else:
        address, kind, headers[REPLY_VIA] = f"logged:{item.external_id}", "", ""
    return InboundMessage(
        channel=item.channel, external_id=message_id(item.channel, item.external_id),
        sender_address=address, sender_name=contact.name,
        subject=item.subject or preview(item.text), text=item.text, received_at=received,
        headers=headers, identity_channel=kind, standalone=True)
