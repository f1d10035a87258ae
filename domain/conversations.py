"""What staff can do to a conversation, the same from the command line as from Slack.

Also the JSON views of conversations and messages that CONTRACT.md fixes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain import cc as cc_list
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.messages import OutboundFile
from frontdesk.domain.replies import ReplyComposer, attach_files
from frontdesk.domain.sla import sla_view
from frontdesk.storage.models import Contact, Conversation, Event, Message, Outbox

_REF = re.compile(r"^\s*(?:FD-?)?([0-9]{1,18})\s*$", re.IGNORECASE | re.ASCII)


CALLBACK_NEEDED = "callback_needed"
"""The audit event of a staff reply kept as a note because nothing reaches the customer."""
CALL_BACK = ("not sent: there is no email address or phone number for this customer, so the "
             "reply is kept as an internal note; the customer must be called back")


class UnknownConversation(LookupError):
    pass


class CannotReply(ValueError):
    pass


def parse_reference(ref: str) -> int:
    m = _REF.match(ref)
    if not m:
        raise UnknownConversation(f"{ref!r} is not a conversation reference (like FD-12 or 12)")
    return int(m.group(1))


async def get_conversation(session: AsyncSession, ref: str | int) -> Conversation:
    number = ref if isinstance(ref, int) else parse_reference(ref)
    conversation = await session.get(Conversation, number)
    if conversation is None:
        raise UnknownConversation(f"no conversation FD-{number}")
    return conversation


async def messages_of(session: AsyncSession, conversation_id: int) -> list[Message]:
    return list((await session.execute(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    )).scalars().all())


async def add_staff_reply(session: AsyncSession, conversation: Conversation, text: str, *,
                          author: str, replies: ReplyComposer, now: datetime,
                          actor: str | None = None,
                          event_data: Mapping[str, Any] | None = None,
                          files: Sequence[OutboundFile] = ()) -> Message:
    """Store a staff reply and queue its delivery on the customer's channel; where nothing
    reaches the customer (:meth:`ReplyComposer.unreachable`) it is kept as a note saying they must
    be called back (:data:`CALL_BACK`, audited as :data:`CALLBACK_NEEDED`).

    ``actor`` names the staff member in the audit (default: ``author``); ``event_data`` adds to
    the audit event (where the reply came from, the Slack user). ``files``: attachments already
    in the attachment store (:func:`.files.store_files`); with files the text may be empty."""
    text = text.strip()
    if not text and not files:
        raise CannotReply("the reply is empty")
    history = await messages_of(session, conversation.id)
    customer = [m for m in history if m.direction == "in" and m.author == "customer"]
    if not customer:
        raise CannotReply(f"{conversation.reference} has no customer message to answer")
    channel = conversation.channel
    if replies.unreachable(customer[-1]):  # a contact logged with no address: call them back
        message = Message(conversation_id=conversation.id, direction="out", author="staff",
                          author_name=author, channel=channel, address="", subject="",
                          text=text, headers={}, is_note=True, failure_reason=CALL_BACK,
                          created_at=now)
        session.add(message)
        await session.flush()
        await attach_files(session, message, files)  # kept with the note, not lost
        conversation.updated_at = now
        session.add(Event(kind=CALLBACK_NEEDED, actor=actor or author,
                          conversation_id=conversation.id, contact_id=conversation.contact_id,
                          message_id=message.id, created_at=now,
                          data={"channel": channel, **(event_data or {})}))
        await session.flush()
        return message
    to_address, cc = cc_list.reply_recipients(conversation, customer)  # reply-all
    message = await replies.queue(session, conversation, answering=customer[-1], text=text,
                                  author="staff", author_name=author, now=now,
                                  to_address=to_address, cc=cc, attachments=files)
    if conversation.first_responded_at is None:
        conversation.first_responded_at = now
    conversation.last_staff_message_at = now
    conversation.updated_at = now
    if conversation.status == "open":
        conversation.status = "pending"
    session.add(Event(kind="staff_reply", actor=actor or author, conversation_id=conversation.id,
                      message_id=message.id, created_at=now,
                      data={"channel": channel, **(event_data or {}),
                            **({"files": [f.filename for f in files]} if files else {})}))
    await session.flush()
    return message


# --- staff actions: the same from Slack, the command line and the scheduler ----------------------

PRIORITIES = ("low", "normal", "high", "urgent")
_TAG = re.compile(r"[a-z0-9_:-]{1,50}")


class InvalidAction(ValueError):
    """The action cannot apply to this conversation (snooze into the past, unknown priority)."""


def _audit(session: AsyncSession, conversation: Conversation, kind: str, *, actor: str,
           now: datetime, data: Mapping[str, Any] | None, **fields: Any) -> None:
    session.add(Event(kind=kind, actor=actor, conversation_id=conversation.id,
                      contact_id=conversation.contact_id, created_at=now,
                      data={**fields, **(data or {})}))


async def resolve(session: AsyncSession, conversation: Conversation, *, actor: str,
                  now: datetime, data: Mapping[str, Any] | None = None,
                  note: str | None = None) -> bool:
    """Mark the conversation resolved; False (and no audit) if it already was. ``note``: what
    solved it, kept as the conversation's ``resolution_note`` (also when it already was
    resolved: then the note alone changes, audited)."""
    note = note.strip() if note else None
    if conversation.status == "resolved":
        if not note or note == conversation.resolution_note:
            return False
        conversation.resolution_note, conversation.updated_at = note, now
        _audit(session, conversation, "resolution_noted", actor=actor, now=now, data=data)
        await session.flush()
        return True
    if note:
        conversation.resolution_note = note
    previous = conversation.status
    conversation.status, conversation.resolved_at = "resolved", now
    conversation.snoozed_until = None
    conversation.updated_at = now
    _audit(session, conversation, "conversation_resolved", actor=actor, now=now, data=data,
           previous=previous, **({"noted": True} if note else {}))
    await session.flush()
    return True


async def reopen(session: AsyncSession, conversation: Conversation, *, actor: str,
                 now: datetime, data: Mapping[str, Any] | None = None) -> bool:
    """Open a resolved, snoozed or pending conversation again; False if it is open already."""
    if conversation.status == "open":
        return False
    previous = conversation.status
    conversation.status = "open"
    conversation.resolved_at = conversation.snoozed_until = None
    conversation.updated_at = now
    _audit(session, conversation, "conversation_reopened", actor=actor, now=now, data=data,
           previous=previous)
    await session.flush()
    return True


async def assign(session: AsyncSession, conversation: Conversation, assignee: str | None, *,
                 actor: str, now: datetime, data: Mapping[str, Any] | None = None) -> bool:
    """Give the conversation to ``assignee`` (None: nobody); False if nothing changed."""
    assignee = (assignee or "").strip()[:256] or None
    if conversation.assignee == assignee:
        return False
    previous = conversation.assignee
    conversation.assignee = assignee
    conversation.updated_at = now
    _audit(session, conversation, "conversation_assigned", actor=actor, now=now, data=data,
           assignee=assignee, previous=previous)
    await session.flush()
    return True


async def snooze(session: AsyncSession, conversation: Conversation, until: datetime, *,
                 actor: str, now: datetime, data: Mapping[str, Any] | None = None) -> bool:
    """Put the conversation aside until ``until`` (the scheduler wakes it then)."""
    if until <= now:
        raise InvalidAction("a snooze must end in the future")
    if conversation.status == "resolved":
        raise InvalidAction(f"{conversation.reference} is resolved; reopen it to snooze it")
    if conversation.status == "snoozed" and conversation.snoozed_until == until:
        return False
    previous = conversation.status
    conversation.status, conversation.snoozed_until = "snoozed", until
    conversation.updated_at = now
    _audit(session, conversation, "conversation_snoozed", actor=actor, now=now, data=data,
           until=iso(until), previous=previous)
    await session.flush()
    return True


async def set_priority(session: AsyncSession, conversation: Conversation, priority: str, *,
                       actor: str, now: datetime, data: Mapping[str, Any] | None = None) -> bool:
    """Set the priority (low, normal, high, urgent); False if it already was that."""
    priority = priority.strip().lower()
    if priority not in PRIORITIES:
        raise InvalidAction(f"{priority!r} is not a priority ({', '.join(PRIORITIES)})")
    if conversation.priority == priority:
        return False
    previous = conversation.priority
    conversation.priority = priority
    conversation.updated_at = now
    _audit(session, conversation, "priority_changed", actor=actor, now=now, data=data,
           priority=priority, previous=previous)
    await session.flush()
    return True


_MORNING = frozenset({"morning", "next-business-morning", "next_business_morning", "tomorrow"})


def conversation_tag(text: str) -> str:
    """A conversation tag as given (CONTRACT.md): 1-50 lower-case letters, digits, ``-``, ``_``
    and ``:``; anything else is refused, with the lower-case form suggested when that would do."""
    tag = text.strip()
    if _TAG.fullmatch(tag):
        return tag
    hint = f" (did you mean {tag.lower()!r}?)" if _TAG.fullmatch(tag.lower()) else ""
    raise InvalidAction(f"{text!r} is not a tag: 1-50 lower-case letters, digits, -, _ and :"
                        + hint)


async def set_tags(session: AsyncSession, conversation: Conversation, *, add: Sequence[str] = (),
                   remove: Sequence[str] = (), replace: Sequence[str] | None = None,
                   actor: str, now: datetime, data: Mapping[str, Any] | None = None) -> bool:
    """Change a conversation's tags (``replace``: exactly these); False if nothing changed."""
    before = list(conversation.tags or [])
    if replace is not None:
        after = sorted({conversation_tag(t) for t in replace})
    else:
        gone = {conversation_tag(t) for t in remove}
        after = sorted(({*before} | {conversation_tag(t) for t in add}) - gone)
    if len(after) > 50:
        raise InvalidAction("a conversation has at most 50 tags")
    if after == sorted(before):
        return False
    conversation.tags, conversation.updated_at = after, now
    _audit(session, conversation, "tags_changed", actor=actor, now=now, data=data,
           added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)))
    await session.flush()
    return True


async def add_note(session: AsyncSession, conversation: Conversation, text: str, *,
                   author: str, now: datetime, actor: str | None = None,
                   data: Mapping[str, Any] | None = None) -> Message:
    """An internal note in the conversation: staff see it, the customer never does."""
    text = text.strip()
    if not text:
        raise InvalidAction("the note is empty")
    message = Message(conversation_id=conversation.id, direction="out", author="staff",
                      author_name=author[:256], channel=conversation.channel, address="",
                      subject="", text=text, headers={}, is_note=True, delivery_status=None,
                      created_at=now)
    session.add(message)
    await session.flush()
    session.add(Event(kind="note_added", actor=actor or author, conversation_id=conversation.id,
                      contact_id=conversation.contact_id, message_id=message.id,
                      created_at=now, data=dict(data or {})))
    conversation.updated_at = now
    return message


def snooze_until(spec: str, now: datetime, calendar: BusinessCalendar) -> datetime:
    """When a snooze given as ``"2h"``, ``"30m"``, ``"1d"`` or ``"morning"`` ends.

    "morning" is the next business morning: the first opening of the business calendar on a
    later day than today (09:00 local when the hours are "always").
    """
    spec = spec.strip().lower()
    if spec in _MORNING:
        return next_business_morning(now, calendar)
    from frontdesk.config.schema import parse_duration

    try:
        length = parse_duration(spec)
    except ValueError:
        raise InvalidAction(f'{spec!r} is not a snooze like "1h", "4h", "2d" or "morning"') \
            from None
    if length <= timedelta(0):
        raise InvalidAction("a snooze must end in the future")
    return now + length


def next_business_morning(now: datetime, calendar: BusinessCalendar) -> datetime:
    tz = calendar.tz
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    opening = calendar.next_open(datetime.combine(tomorrow, time(0), tzinfo=tz))
    if calendar.hours.always:
        opening = datetime.combine(opening.astimezone(tz).date(), time(9), tzinfo=tz)
    return opening.astimezone(UTC)


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_saved_reply(template: str, conversation: Conversation, *, agent: str = "") -> str:
    """A saved reply with ``{name}``, ``{first_name}``, ``{reference}``, ``{subject}`` and
    ``{agent}`` filled in (an unknown name stays as written; no name known gives "there")."""
    name = (conversation.contact.name or "").strip()
    values = _Blank(name=name or "there", first_name=name.split()[0] if name else "there",
                    reference=conversation.reference, subject=conversation.subject,
                    agent=agent)
    try:
        return template.format_map(values)
    except (ValueError, IndexError, AttributeError) as exc:
        raise InvalidAction(f"the saved reply cannot be filled in ({exc}); "
                            "write a literal brace as {{ or }}") from None


# --- JSON views (CONTRACT.md "--json shapes") -------------------------------------------------

def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def contact_view(contact: Contact) -> dict[str, Any]:
    return {"id": contact.id, "name": contact.name,
            "identities": [{"channel": i.channel, "address": i.address}
                           for i in contact.identities]}


def conversation_view(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id, "reference": c.reference, "status": c.status, "channel": c.channel,
        "subject": c.subject, "priority": c.priority, "assignee": c.assignee,
        "created_at": iso(c.created_at), "updated_at": iso(c.updated_at),
        "first_response_due_at": iso(c.first_response_due_at),
        "first_responded_at": iso(c.first_responded_at), "resolved_at": iso(c.resolved_at),
        "escalation_level": c.escalation_level, "inbox_address": c.inbox_address,
        "contact": contact_view(c.contact),
        **sla_view(c),  # the scheduler's due times, SLA policy and pause, survey and rating
        "tags": list(c.tags or []), "resolution_note": c.resolution_note,
        "cc": cc_list.active(c.cc),
    }


def message_view(m: Message) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": m.id, "direction": m.direction, "author": m.author, "author_name": m.author_name,
        "channel": m.channel, "address": m.address, "subject": m.subject, "text": m.text,
        "text_new": m.text_new if m.text_new is not None else m.text,  # without quoted history
        "created_at": iso(m.created_at), "delivery_status": m.delivery_status,
        "automated": m.automated, "note": m.is_note, "external_id": m.external_id,
        "sent_at": iso(m.sent_at),
        "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                         "sha256": a.sha256} for a in m.attachments],
    }
    if m.failure_reason:
        view["failure_reason"] = m.failure_reason
    return view


async def waiting_reasons(session: AsyncSession, messages: list[Message]) -> dict[int, str]:
    """Why queued replies have not gone yet (a rate limit, a reply held for the customer's
    closed messaging window), by message id."""
    queued = [m.id for m in messages if m.delivery_status == "queued"]
    if not queued:
        return {}
    rows = await session.execute(
        select(Outbox.message_id, Outbox.last_error).where(
            Outbox.message_id.in_(queued), Outbox.kind == "deliver",
            Outbox.state == "pending", Outbox.last_error.is_not(None)))
    return {int(mid): str(error) for mid, error in rows if mid is not None}


def conversation_detail(c: Conversation, messages: list[Message],
                        other_conversations: list[dict[str, Any]] | None = None,
                        waiting: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The conversation with its messages and (when given, see
    :func:`.contacts.other_conversations`) the contact's other conversations on every channel;
    ``waiting`` (:func:`waiting_reasons`) says why queued replies wait."""
    views = [message_view(m) for m in messages]
    for view in views:
        if waiting and view["id"] in waiting:
            view["waiting_reason"] = waiting[view["id"]]
    detail = {**conversation_view(c), "messages": views}
    if other_conversations is not None:
        detail["other_conversations"] = other_conversations
    return detail
