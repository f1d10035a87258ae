"""A conversation's CC list: the people a customer copied, kept on staff replies (reply-all).

``conversations.cc`` is one JSON list of lower-case addresses, in the order they first appeared.
An address staff removed stays in the same list as a marker, ``"-bob@example.org"``, so that a
later mail that still copies bob does not add him back; staff can add him again (``+bob``),
which drops the marker. Every view (``show --json``, the card, the replies) shows the active
addresses only (:func:`active`).

What joins the list: each customer mail's ``Cc:`` and the other ``To:`` recipients
(:attr:`~frontdesk.domain.messages.InboundMessage.cc`, made by the email channel without our own
inbox addresses, their plus-addresses and the sender), never the conversation's own customer,
never an address that is not a plain ``local@domain.tld`` (such an address could not be written
in a header or an SMTP envelope, and one bad recipient would fail the whole reply). At most
:data:`MAX_CC` addresses are kept; the rest of a long list is dropped.

Staff replies go to the customer with the list in ``Cc:``; acknowledgements, surveys and other
automatic mail never copy anyone (:class:`~frontdesk.domain.replies.ReplyComposer`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import Conversation, Event, Message

MAX_CC = 50
"""Active addresses a conversation keeps at most."""
MAX_REMOVED = 100
"""Removal markers kept at most (the oldest go first)."""
REMOVED = "-"
"""The prefix of a removal marker in ``conversations.cc``."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ADDRESS = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                      rf"@{_LABEL}(?:\.{_LABEL})+", re.ASCII)


class CcError(ValueError):
    """A CC change that cannot be made (not an address, the list is full); one line."""


def clean_address(text: str) -> str | None:
    """``text`` as a CC address (lower case, without ``<>`` and ``mailto:``), or None when it is
    not a plain ASCII ``local@domain.tld`` of at most 254 characters."""
    address = text.strip().strip("<>").strip().lower()
    address = address.removeprefix("mailto:")
    if len(address) > 254 or address.startswith(REMOVED) or not _ADDRESS.fullmatch(address):
        return None
    if len(address.partition("@")[0]) > 64:
        return None
    return address


def active(stored: Iterable[Any] | None) -> list[str]:
    """The addresses replies copy: the stored list without its removal markers."""
    return [a for a in stored or () if isinstance(a, str) and a and not a.startswith(REMOVED)]


def removed(stored: Iterable[Any] | None) -> set[str]:
    """The addresses staff removed (never added back by mail)."""
    return {a[len(REMOVED):] for a in stored or ()
            if isinstance(a, str) and a.startswith(REMOVED)}


def _store(kept: Sequence[str], gone: Sequence[str]) -> list[str]:
    return [*kept, *(REMOVED + a for a in gone[-MAX_REMOVED:])]


def merged(stored: Iterable[Any] | None, incoming: Iterable[str], *,
           exclude: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """``stored`` with the new addresses of a customer mail; (the new stored list, the addresses
    added). Addresses already there, removed by staff, in ``exclude`` (the customer's own) or not
    plain addresses are skipped; past :data:`MAX_CC` the rest is dropped."""
    stored = list(stored or ())
    kept = active(stored)
    gone = [a[len(REMOVED):] for a in stored if isinstance(a, str) and a.startswith(REMOVED)]
    skip = {*kept, *gone, *(e.strip().lower() for e in exclude)}
    added: list[str] = []
    for text in incoming:
        if len(kept) + len(added) >= MAX_CC:
            break
        address = clean_address(text)
        if address is None or address in skip:
            continue
        skip.add(address)
        added.append(address)
    if not added:
        return stored, []
    return _store([*kept, *added], gone), added


def changed(stored: Iterable[Any] | None, *, add: Iterable[str] = (),
            remove: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """Staff's change: (the new stored list, added, removed). A removed address is kept as a
    marker; adding drops its marker. Raises :class:`CcError` for something that is not an
    address or a list over :data:`MAX_CC`."""
    stored = list(stored or ())
    kept = active(stored)
    gone = [a[len(REMOVED):] for a in stored if isinstance(a, str) and a.startswith(REMOVED)]
    added: list[str] = []
    taken: list[str] = []
    for text in remove:
        address = _address(text)
        if address in kept:
            kept.remove(address)
        if address not in gone:  # also an address not (yet) copied: mail never adds it
            gone.append(address)
            taken.append(address)
    for text in add:
        address = _address(text)
        if address in gone:
            gone.remove(address)
        if address not in kept:
            kept.append(address)
            added.append(address)
            if address in taken:
                taken.remove(address)
                added.remove(address)
    if len(kept) > MAX_CC:
        raise CcError(f"a conversation copies at most {MAX_CC} addresses")
    return _store(kept, gone), added, taken


def _address(text: str) -> str:
    address = clean_address(text)
    if address is None:
        raise CcError(f"{text.strip()[:100]!r} is not an email address")
    return address


async def change_cc(session: AsyncSession, conversation: Conversation, *,
                    add: Sequence[str] = (), remove: Sequence[str] = (), actor: str,
                    now: datetime, data: Mapping[str, Any] | None = None,
                    ) -> tuple[list[str], list[str]]:
    """Staff add to or remove from a conversation's CC list; (added, removed), both empty when
    nothing changed. Audited as ``cc_changed`` (``added``, ``removed``) naming ``actor``."""
    own = {i.address.lower() for i in conversation.contact.identities if i.channel == "email"}
    customer = [a for a in add if clean_address(a) in own]
    if customer:
        raise CcError(f"{customer[0].strip()[:100]} is the customer's own address; replies go "
                      "to it anyway")
    stored = list(conversation.cc or [])
    after, added, taken = changed(stored, add=add, remove=remove)
    if after == stored:
        return [], []
    conversation.cc, conversation.updated_at = after, now
    if added or taken:  # (else only the order of the markers moved)
        session.add(Event(kind="cc_changed", actor=actor, conversation_id=conversation.id,
                          contact_id=conversation.contact_id, created_at=now,
                          data={"added": added, "removed": taken, **(data or {})}))
    await session.flush()
    return added, taken


def reply_recipients(conversation: Conversation,
                     customer_messages: Sequence[Message]) -> tuple[str, list[str]]:
    """Who a staff reply goes to: (To, CC). To is the address of the last customer message, unless
    that came from someone copied (they answered too): then the customer's, the last message
    from an address not in the CC list. CC is the active list without the To address."""
    stored = conversation.cc or []
    copied = {*active(stored), *removed(stored)}
    last = customer_messages[-1]
    to = last.address
    if to.lower() in copied:
        to = next((m.address for m in reversed(customer_messages)
                   if m.channel == last.channel and m.address and not m.automated
                   and m.address.lower() not in copied), to)
    return to, [a for a in active(stored) if a != to.lower()]


async def forget(session: AsyncSession, addresses: Iterable[str]) -> int:
    """GDPR erasure of a person: their addresses leave every conversation's CC list (removal
    markers too) and the ``cc_changed`` audit of those conversations. Returns how many
    conversations changed."""
    gone = {a.strip().lower() for a in addresses if a and "@" in a}
    if not gone:
        return 0
    stored = cast(Conversation.cc, String)
    found = (await session.execute(select(Conversation).where(or_(
        *(stored.contains(f'{a}"', autoescape=True) for a in gone)))
        .execution_options(populate_existing=True))).unique().scalars().all()
    changed_ids = []
    for c in found:
        kept = [a for a in c.cc or [] if not (isinstance(a, str)
                                              and a.removeprefix(REMOVED) in gone)]
        if kept != list(c.cc or []):
            c.cc = kept
            changed_ids.append(c.id)
    if changed_ids:
        for e in (await session.execute(select(Event).where(
                Event.kind == "cc_changed", Event.conversation_id.in_(changed_ids)))).scalars():
            data = dict(e.data or {})
            for key in ("added", "removed"):
                if isinstance(data.get(key), list):
                    data[key] = [a for a in data[key] if a not in gone]
            e.data = data
    return len(changed_ids)
