"""One customer across channels: finding a contact, merging two, and verified identity links.

A contact has identities (an email address, a phone number on SMS/WhatsApp/voice, a Telegram
user id). Two contacts become one only

* by a staff action: :func:`merge_contacts` (``frontdesk contact merge A B``, the Slack desk),
  which moves B's identities and conversations to A, keeps every message of both, leaves B as a
  pointer (``merged_into_id``) and writes who did it to the audit; or
* by a verified rule: a customer who gives an address on another channel (an email address sent
  alone by SMS, WhatsApp or Telegram, or one staff pass on with ``frontdesk contact link``) gets a
  six-digit code at that address, and only when the code comes back in their conversation is the
  address linked (:class:`LinkVerifier`). A known address of another contact is then merged
  into theirs, with "verified code" in the audit.

Never by display name: two people called "Ada" stay two contacts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import PHONE_CHANNELS
from frontdesk.domain.messages import OutboundMessage
from frontdesk.domain.replies import ReplyComposer, ReplyContext
from frontdesk.storage.models import (
    Contact,
    Conversation,
    Event,
    Identity,
    IdentityLink,
    Message,
    Outbox,
)

log = logging.getLogger(__name__)

LINK_LIFETIME = timedelta(hours=24)
LINK_REQUESTS_PER_DAY = 3
LINK_MAX_ATTEMPTS = 5
_EMAIL = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+\.[^@\s<>()\[\],;:\"]+$")
_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
_CODE_REPLY_MAX = 300
_ONLY_ADDRESS = re.compile(r"^\s*(?:/start\s+)?(?:my e-?mail(?: address)? is:?\s*)?"
                           r"<?([^@\s<>]+@[^@\s<>]+\.[^@\s<>]+?)>?\s*[.!]?\s*$", re.IGNORECASE)


class ContactError(ValueError):
    """The contact cannot be found or the action cannot apply; the text is for people."""


# --- addresses --------------------------------------------------------------------------------

def normalise_phone(value: str) -> str | None:
    """``+1 (555) 000-1111`` → ``+15550001111``; None when it is not an international number."""
    import phonenumbers

    text = value.strip()
    if not text.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def parse_address(value: str, channels: Collection[str]) -> tuple[tuple[str, ...], str]:
    """Which identity channels an address given by a person can be, and its normal form:
    ``ada@example.org`` (email), ``+15550001111`` (sms, whatsapp or voice), ``telegram:12345``,
    ``whatsapp:+15550001111``; ``channels`` are the channel names an address may start with."""
    text = value.strip()
    prefix, colon, rest = text.partition(":")
    if colon and prefix.lower() in channels and not text.lower().startswith("mailto:"):
        channel = prefix.lower()
        if channel == "email":
            return parse_address(rest, channels)
        if channel in PHONE_CHANNELS:
            phone = normalise_phone(rest)
            if phone is None:
                raise ContactError(f"{rest.strip()!r} is not a phone number like +15550001111")
            return (channel,), phone
        if not rest.strip():
            raise ContactError(f"{value!r} names no {channel} address")
        return (channel,), rest.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    address = parseaddr(text)[1] if "<" in text else text
    if "@" in address:
        address = address.strip().lower()
        if not _EMAIL.match(address):
            raise ContactError(f"{value!r} is not an email address")
        return ("email",), address
    phone = normalise_phone(text)
    if phone is not None:
        return PHONE_CHANNELS, phone
    raise ContactError(f"{value!r} is neither a contact id nor an address (ada@example.org, "
                       "+15550001111, telegram:12345)")


async def root_contact(session: AsyncSession, contact: Contact) -> Contact:
    """The contact a merged one now lives on (merges can chain)."""
    seen = {contact.id}
    while contact.merged_into_id is not None:
        contact = await session.get_one(Contact, contact.merged_into_id)
        if contact.id in seen:
            break
        seen.add(contact.id)
    return contact


async def find_contact(session: AsyncSession, key: str | int, *,
                       known: Collection[str]) -> Contact:
    """A contact by id (``7``) or by one of its addresses (``known``: the channel names an
    address may start with); a merged contact gives the one it was merged into."""
    text = str(key).strip()
    if text.isascii() and text.isdigit() and len(text) <= 18:  # an id (a BIGINT at most)
        contact = await session.get(Contact, int(text))
        if contact is None:
            raise ContactError(f"no contact {text}")
        return await root_contact(session, contact)
    channels, address = parse_address(text, known)
    rows = (await session.execute(
        select(Identity).where(Identity.channel.in_(channels), Identity.address == address)
    )).scalars().all()
    found: dict[int, tuple[Contact, list[str]]] = {}
    for identity in rows:
        contact = await root_contact(session, await session.get_one(Contact, identity.contact_id))
        found.setdefault(contact.id, (contact, []))[1].append(identity.channel)
    if not found:
        raise ContactError(f"no contact has the address {address}")
    if len(found) > 1:
        owners = ", ".join(f"{cid} ({'/'.join(chs)})" for cid, (_, chs) in sorted(found.items()))
        raise ContactError(f"{address} belongs to several contacts: {owners}; give the id")
    return next(iter(found.values()))[0]


# --- merging --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MergeResult:
    contact_id: int
    merged_id: int
    identities: list[dict[str, str]]
    conversations: list[str]


async def merge_contacts(session: AsyncSession, keep: Contact, other: Contact, *, actor: str,
                         now: datetime, via: str = "staff") -> MergeResult:
    """Merge ``other`` into ``keep``: its identities and conversations move over (every message
    stays where it is), it points to ``keep`` from now on, and the audit says who did it."""
    keep = await root_contact(session, keep)
    other = await root_contact(session, other)
    if keep.id == other.id:
        raise ContactError(f"contact {keep.id} and that one are already the same contact")
    identities = (await session.execute(
        select(Identity).where(Identity.contact_id == other.id).order_by(Identity.id)
    )).scalars().all()
    moved = [{"channel": i.channel, "address": i.address} for i in identities]
    conversations = (await session.execute(
        select(Conversation.id).where(Conversation.contact_id == other.id)
        .order_by(Conversation.id)
    )).scalars().all()
    await session.execute(update(Identity).where(Identity.contact_id == other.id)
                          .values(contact_id=keep.id))
    await session.execute(update(Conversation).where(Conversation.contact_id == other.id)
                          .values(contact_id=keep.id))
    await session.execute(update(IdentityLink).where(IdentityLink.contact_id == other.id)
                          .values(contact_id=keep.id))
    await session.execute(update(Contact).where(Contact.merged_into_id == other.id)
                          .values(merged_into_id=keep.id))
    other.merged_into_id = keep.id
    other.updated_at = now
    if not keep.name and other.name:
        keep.name = other.name
    keep.tags = {**(other.tags or {}), **(keep.tags or {})}
    keep.updated_at = now
    references = [f"FD-{c}" for c in conversations]
    data = {"kept": keep.id, "merged": other.id, "merged_name": other.name, "via": via,
            "identities": moved, "conversations": references}
    session.add(Event(kind="contacts_merged", actor=actor, contact_id=keep.id, created_at=now,
                      data=data))
    session.add(Event(kind="contact_merged_into", actor=actor, contact_id=other.id,
                      created_at=now, data=data))
    await session.flush()
    # Identities were moved by a bulk UPDATE: load the survivor's list afresh.
    await session.refresh(keep, attribute_names=["identities"])
    log.info("contact %d merged into %d by %s (%s)", other.id, keep.id, actor, via)
    return MergeResult(keep.id, other.id, moved, references)


# --- views ---------------------------------------------------------------------------------------

def conversation_summary(c: Conversation) -> dict[str, Any]:
    from frontdesk.domain.conversations import iso

    return {"id": c.id, "reference": c.reference, "channel": c.channel, "status": c.status,
            "subject": c.subject, "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at)}


async def conversations_of(session: AsyncSession, contact_id: int, *,
                           exclude: int | None = None, limit: int = 50) -> list[Conversation]:
    query = (select(Conversation).where(Conversation.contact_id == contact_id)
             .order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit))
    if exclude is not None:
        query = query.where(Conversation.id != exclude)
    return list((await session.execute(query)).unique().scalars().all())


async def other_conversations(session: AsyncSession, conversation: Conversation,
                              limit: int = 20) -> list[dict[str, Any]]:
    """The contact's other conversations on every channel, most recently active first (for
    ``frontdesk show`` and the Slack card)."""
    others = await conversations_of(session, conversation.contact_id, exclude=conversation.id,
                                    limit=limit)
    return [{"reference": c.reference, "channel": c.channel, "status": c.status,
             "subject": c.subject} for c in others]


async def contact_detail(session: AsyncSession, contact: Contact) -> dict[str, Any]:
    """A contact with its identities, the contacts merged into it and all its conversations."""
    from frontdesk.domain.conversations import contact_view, iso

    contact = await root_contact(session, contact)
    await session.refresh(contact, attribute_names=["identities"])
    merged = (await session.execute(
        select(Contact.id).where(Contact.merged_into_id == contact.id).order_by(Contact.id)
    )).scalars().all()
    conversations = await conversations_of(session, contact.id, limit=500)
    counts: dict[int, int] = {}
    if conversations:
        rows = await session.execute(
            select(Message.conversation_id, func.count()).where(
                Message.conversation_id.in_([c.id for c in conversations]))
            .group_by(Message.conversation_id))
        counts = {conversation_id: n for conversation_id, n in rows}
    return {**contact_view(contact), "created_at": iso(contact.created_at),
            "merged_from": list(merged),
            "conversations": [{**conversation_summary(c), "messages": counts.get(c.id, 0)}
                              for c in conversations]}


def format_contact(d: dict[str, Any]) -> str:
    lines = [f"contact {d['id']}  {d['name'] or '(no name)'}"]
    for i in d["identities"]:
        lines.append(f"  {i['channel']:9} {i['address']}")
    if d["merged_from"]:
        lines.append("  merged from contact " + ", ".join(str(i) for i in d["merged_from"]))
    lines.append("")
    if not d["conversations"]:
        lines.append("no conversations")
    for c in d["conversations"]:
        lines.append(f"{c['reference']:>8}  {c['status']:8} {c['channel']:8} "
                     f"{(c['updated_at'] or '')[:16].replace('T', ' ')}  {c['subject']}")
    return "\n".join(lines) + "\n"


# --- verified links ------------------------------------------------------------------------------

def _code_hash(link: IdentityLink, code: str) -> str:
    return hashlib.sha256(
        f"{link.contact_id}:{link.channel}:{link.address}:{code}".encode()).hexdigest()


async def request_link(session: AsyncSession, contact: Contact, address: str, *,
                       replies: ReplyComposer, now: datetime, requested_by: str,
                       conversation: Conversation | None = None,
                       unavailable: Mapping[str, str] | None = None) -> IdentityLink:
    """Send a code to ``address``; once it comes back in one of the contact's conversations the
    address is the contact's (see :class:`LinkVerifier`). ``unavailable``: the channels that
    cannot send here, each with the reason why; a code for one of them is refused at once
    (nothing is queued that could never go)."""
    contact = await root_contact(session, contact)
    channels, normal = parse_address(address, replies.channels)
    channel = channels[0] if channels != PHONE_CHANNELS else "sms"
    if channel not in ("email", "sms", "whatsapp"):
        raise ContactError(f"a code cannot be sent to a {channel} address; merge the contacts "
                           "with `frontdesk contact merge` instead")
    owner = (await session.execute(
        select(Identity.contact_id).where(Identity.channel == channel, Identity.address == normal)
    )).scalar()
    if owner is not None and (await root_contact(
            session, await session.get_one(Contact, owner))).id == contact.id:
        raise ContactError(f"{normal} is already contact {contact.id}'s address")
    if unavailable and channel in unavailable:
        raise ContactError(f"a code cannot be sent to {normal}: {unavailable[channel]}")
    recent = (await session.execute(
        select(func.count()).select_from(IdentityLink).where(
            IdentityLink.contact_id == contact.id,
            IdentityLink.created_at >= now - timedelta(days=1))
    )).scalar_one()
    if recent >= LINK_REQUESTS_PER_DAY:
        raise ContactError(f"contact {contact.id} asked for {recent} codes in the last 24 hours; "
                           "no more are sent today")
    await session.execute(
        update(IdentityLink).where(IdentityLink.contact_id == contact.id,
                                   IdentityLink.channel == channel,
                                   IdentityLink.address == normal,
                                   IdentityLink.state == "pending")
        .values(state="replaced"))
    if conversation is None:
        latest = await conversations_of(session, contact.id, limit=1)
        conversation = latest[0] if latest else None
    code = f"{secrets.randbelow(10 ** 6):06d}"
    link = IdentityLink(contact_id=contact.id, channel=channel, address=normal,
                        conversation_id=conversation.id if conversation else None,
                        code_hash="", state="pending", attempts=0, requested_by=requested_by,
                        created_at=now, expires_at=now + LINK_LIFETIME)
    link.code_hash = _code_hash(link, code)
    session.add(link)
    await session.flush()
    out = _code_message(link, code, conversation, replies)
    session.add(Outbox(kind="deliver", conversation_id=link.conversation_id, message_id=None,
                       payload=asdict(out), idempotency_key=out.idempotency_key,
                       state="pending", attempts=0, next_attempt_at=now, created_at=now))
    session.add(Event(kind="identity_link_requested", actor=requested_by,
                      contact_id=contact.id, conversation_id=link.conversation_id,
                      created_at=now, data={"channel": channel, "address": normal,
                                            "link_id": link.id}))
    await session.flush()
    return link


def _code_message(link: IdentityLink, code: str, conversation: Conversation | None,
                  replies: ReplyComposer) -> OutboundMessage:
    where = (f"conversation {conversation.reference} ({conversation.channel})"
             if conversation else "your conversation with us")
    who = replies.signature
    reference = conversation.reference if conversation else ""
    key = f"identity-link-{link.id}"
    if link.channel == "email":
        text = (f"Hello,\n\nsomeone asked {who} to add this email address to their contact "
                f"details. If that was you, send this code in {where}:\n\n    {code}\n\n"
                "The code is valid for 24 hours. If it was not you, ignore this mail: nothing "
                "changes without the code.\n")
        subject = "Your verification code"
    else:
        text = (f"{who}: your code is {code}. Send it in {where} to link this number. "
                "Valid 24 hours; ignore it if you did not ask.")
        subject = ""
    return replies.compose(
        OutboundMessage(channel=link.channel, to_address=link.address, text=text,
                        subject=subject, automated=True, idempotency_key=key,
                        conversation_reference=reference),
        ReplyContext(reference=reference))


def offered_address(text: str) -> str | None:
    """The email address of a message that is just an address ("ada@example.org",
    "/start ada@example.org", "my email is ada@example.org"), else None."""
    match = _ONLY_ADDRESS.match(text or "")
    if not match:
        return None
    address = match.group(1).lower()
    return address if _EMAIL.match(address) else None


class LinkVerifier:
    """Inbound hooks for verified links: an address offered alone on a chat channel starts a
    link (a code goes to it), and a code that comes back verifies it."""

    def __init__(self, replies: ReplyComposer) -> None:
        self._replies = replies

    async def __call__(self, session: AsyncSession, conversation: Conversation, message: Message,
                       is_new: bool) -> None:
        if message.direction != "in" or message.author != "customer" or message.automated:
            return
        now = message.created_at
        if await self._check_code(session, conversation, message, now):
            return
        if message.channel != "email":
            address = offered_address(message.text)
            if address is not None:
                await self._offer(session, conversation, address, now)

    async def _offer(self, session: AsyncSession, conversation: Conversation, address: str,
                     now: datetime) -> None:
        contact = await session.get_one(Contact, conversation.contact_id)
        try:
            await request_link(session, contact, address, replies=self._replies, now=now,
                               requested_by="customer", conversation=conversation)
        except ContactError as exc:
            log.info("no verification code sent for %s (contact %d): %s", address,
                     contact.id, exc)

    async def _check_code(self, session: AsyncSession, conversation: Conversation,
                          message: Message, now: datetime) -> bool:
        text = message.text_new if message.text_new is not None else (message.text or "")
        if len(text) > _CODE_REPLY_MAX:
            return False  # a code comes back in a short message; spare the store the lookup
        codes = _CODE.findall(text)
        if not codes:
            return False
        links = (await session.execute(
            select(IdentityLink).where(IdentityLink.contact_id == conversation.contact_id,
                                       IdentityLink.state == "pending",
                                       IdentityLink.expires_at > now)
            .order_by(IdentityLink.id.desc())
        )).scalars().all()
        if not links:
            return False
        for link in links:
            if any(hmac.compare_digest(_code_hash(link, code), link.code_hash) for code in codes):
                await self._verified(session, link, conversation, message, now)
                return True
        for link in links:
            link.attempts += 1
            if link.attempts >= LINK_MAX_ATTEMPTS:
                link.state = "failed"
                session.add(Event(kind="identity_link_failed", actor="customer",
                                  contact_id=link.contact_id, conversation_id=conversation.id,
                                  created_at=now, data={"channel": link.channel,
                                                        "address": link.address,
                                                        "reason": "too many wrong codes"}))
        return False

    async def _verified(self, session: AsyncSession, link: IdentityLink,
                        conversation: Conversation, message: Message, now: datetime) -> None:
        contact = await root_contact(session, await session.get_one(Contact, link.contact_id))
        link.state, link.verified_at = "verified", now
        owner = (await session.execute(
            select(Identity).where(Identity.channel == link.channel,
                                   Identity.address == link.address)
        )).scalars().first()
        merged: int | None = None
        if owner is None:
            session.add(Identity(contact_id=contact.id, channel=link.channel,
                                 address=link.address, created_at=now))
        else:
            other = await root_contact(session, await session.get_one(Contact, owner.contact_id))
            if other.id != contact.id:
                await merge_contacts(session, contact, other, actor="customer (verified code)",
                                     now=now, via="verified code")
                merged = other.id
        session.add(Event(kind="identity_verified", actor="customer",
                          contact_id=contact.id, conversation_id=conversation.id,
                          message_id=message.id, created_at=now,
                          data={"channel": link.channel, "address": link.address,
                                "link_id": link.id, "merged": merged}))
        await session.flush()
        log.info("contact %d verified %s %s%s", contact.id, link.channel, link.address,
                 f" (merged contact {merged})" if merged else "")
