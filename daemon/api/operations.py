"""What each ``/api/v1`` route does: the same domain functions as the command line and the Slack
desk, with the token's name in the audit (:attr:`.server.Call.audit`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, or_, select

from frontdesk.channels.logged.contact import LoggedContact
from frontdesk.channels.logged.intake import Intake, IntakeError, IntakePending
from frontdesk.config.schema import parse_duration
from frontdesk.daemon.api.calls import Answer, ApiError, Call
from frontdesk.daemon.api.models import (
    ActionIn,
    ContactOut,
    ContactPatch,
    ConversationDetail,
    ConversationPage,
    ConversationQuery,
    ConversationSummary,
    ErrorOut,
    ExportOut,
    FileIn,
    InboundOut,
    MessageOut,
    NoteIn,
    ReplyIn,
    ReportOut,
    ReportQuery,
)
from frontdesk.daemon.api.server import PREFIX, decode_cursor, encode_cursor
from frontdesk.daemon.api.spec import Operation
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.contacts import (
    ContactError,
    contact_detail,
    find_contact,
    other_conversations,
)
from frontdesk.domain.conversations import (
    CannotReply,
    InvalidAction,
    UnknownConversation,
    add_note,
    add_staff_reply,
    assign,
    conversation_detail,
    conversation_view,
    get_conversation,
    message_view,
    messages_of,
    reopen,
    resolve,
    set_priority,
    set_tags,
    snooze,
    snooze_until,
    waiting_reasons,
)
from frontdesk.domain.files import FileProblem, store_files
from frontdesk.domain.messages import Attachment, OutboundFile
from frontdesk.domain.privacy import (
    change_contact,
    contact_tag_list,
    erase_contact,
    export_contact,
    finish_erasure,
    live_contact,
)
from frontdesk.domain.replies import ReplyComposer
from frontdesk.domain.report import Filters, build_report
from frontdesk.domain.search import InvalidQuery, search_conversations
from frontdesk.domain.sla import contact_tags
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.db import Store
from frontdesk.storage.models import Contact, Conversation, Message

REF_EXAMPLE = {"ref": "FD-1"}
_NOT_FOUND = ("No such conversation", ErrorOut)


@dataclass(frozen=True)
class Services:
    """What the operations need from the daemon."""

    replies: ReplyComposer
    calendar: BusinessCalendar
    known_channels: Collection[str]
    kick_outbox: Callable[[], None]
    store: Store
    attachments: AttachmentStore
    intake: Intake


async def _conversation(call: Call) -> Conversation:
    try:
        return await get_conversation(call.session, call.params["ref"])
    except UnknownConversation as exc:
        raise ApiError(404, str(exc)) from None


def _summary(c: Conversation) -> dict[str, Any]:
    return conversation_view(c)


async def _contact(call: Call) -> Contact:
    """The contact of ``{id}`` (a merged one: the one it lives on); 404 when there is none or it
    was erased."""
    text = call.params["id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ApiError(404, f"no contact {text!r}: a contact id is a number")
    contact = await call.session.get(Contact, int(text))
    try:
        if contact is None:
            raise ContactError(f"no contact {text}")
        return await live_contact(call.session, contact)
    except ContactError as exc:
        raise ApiError(404, str(exc)) from None


async def _contact_view(call: Call, contact: Contact) -> dict[str, Any]:
    detail = await contact_detail(call.session, contact)
    return {**detail, "tags": contact_tag_list(contact)}


async def _files(given: list[FileIn], store: AttachmentStore) -> list[OutboundFile]:
    """A reply's files, decoded and stored once each (422 for what is no file)."""
    decoded = []
    for number, f in enumerate(given):
        try:
            data = base64.b64decode(f.content_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, f"attachments[{number}].content_base64 is not base64") from None
        decoded.append(Attachment(f.filename, f.content_type, data))
    if not decoded:
        return []
    try:
        return await asyncio.to_thread(store_files, decoded, store)
    except FileProblem as exc:
        raise ApiError(422, f"attachments: {exc}") from None


async def _message(call: Call, message: Message) -> dict[str, Any]:
    await call.session.refresh(message, ["attachments"])
    return message_view(message)


def build(services: Services) -> list[Operation]:
    """The operations of ``/api/v1``, in the order the OpenAPI document lists them."""

    async def list_conversations(call: Call) -> Answer:
        q: ConversationQuery = call.query
        query = select(Conversation).order_by(Conversation.created_at.desc(),
                                              Conversation.id.desc())
        if q.status:
            query = query.where(Conversation.status == q.status)
        if q.channel:
            query = query.where(Conversation.channel == q.channel.lower())
        if q.contact:
            try:
                contact = await find_contact(call.session, q.contact,
                                             known=services.known_channels)
            except ContactError:
                return Answer(200, {"items": [], "next_cursor": None})
            query = query.where(Conversation.contact_id == contact.id)
        if q.q:
            try:
                hits = await search_conversations(call.session, q.q, limit=1000)
            except InvalidQuery as exc:
                raise ApiError(422, f"q: {exc}") from None
            query = query.where(Conversation.id.in_([h.conversation_id for h in hits]))
        if q.cursor:
            at, row = decode_cursor(q.cursor)
            query = query.where(or_(Conversation.created_at < at,
                                    and_(Conversation.created_at == at, Conversation.id < row)))
        tag = q.tag.strip().lower() if q.tag else None
        items: list[Conversation] = []
        # Tags are JSON lists (conversations) and JSON objects (contacts): filtered here, a
        # page at a time, so the cursor stays exact.
        chunk = q.limit + 1 if tag is None else max(200, q.limit * 4)
        while len(items) <= q.limit:
            rows = list((await call.session.execute(query.limit(chunk))).unique().scalars())
            for c in rows:
                if tag is None or tag in _tags_of(c):
                    items.append(c)
            if len(rows) < chunk:
                break
            last = rows[-1]
            query = query.where(or_(Conversation.created_at < last.created_at,
                                    and_(Conversation.created_at == last.created_at,
                                         Conversation.id < last.id)))
        page, more = items[:q.limit], len(items) > q.limit
        cursor = encode_cursor(page[-1].created_at, page[-1].id) if more and page else None
        return Answer(200, {"items": [_summary(c) for c in page], "next_cursor": cursor})

    async def show(call: Call) -> Answer:
        c = await _conversation(call)
        messages = await messages_of(call.session, c.id)
        others = await other_conversations(call.session, c)
        waiting = await waiting_reasons(call.session, messages)
        return Answer(200, conversation_detail(c, messages, others, waiting))

    async def reply(call: Call) -> Answer:
        body: ReplyIn = call.body
        c = await _conversation(call)
        files = await _files(body.attachments, services.attachments)
        try:
            message = await add_staff_reply(call.session, c, body.text, author=body.author,
                                            replies=services.replies, now=call.now,
                                            actor=body.author, event_data=call.audit,
                                            files=files)
        except CannotReply as exc:
            raise ApiError(409, str(exc)) from None
        call.after_commit.append(services.kick_outbox)
        return Answer(202, await _message(call, message), c.id)

    async def note(call: Call) -> Answer:
        body: NoteIn = call.body
        c = await _conversation(call)
        try:
            message = await add_note(call.session, c, body.text, author=body.author,
                                     now=call.now, data=call.audit)
        except InvalidAction as exc:
            raise ApiError(422, str(exc)) from None
        return Answer(201, await _message(call, message), c.id)

    async def action(call: Call) -> Answer:
        body: ActionIn = call.body
        c = await _conversation(call)
        kw: dict[str, Any] = {"actor": body.author, "now": call.now, "data": call.audit}
        value = body.value
        try:
            if body.action == "resolve":
                await resolve(call.session, c, note=body.note, **kw)
            elif body.action == "reopen":
                await reopen(call.session, c, **kw)
            elif body.action == "assign":
                if isinstance(value, list):
                    raise InvalidAction("assign: value is one name, or null for nobody")
                await assign(call.session, c, value, **kw)
            elif body.action == "snooze":
                if not isinstance(value, str):
                    raise InvalidAction('snooze: value is how long, like "2h", or "morning"')
                try:
                    until = snooze_until(value, call.now, services.calendar)
                except ValueError as exc:
                    raise InvalidAction(f"snooze: {exc}") from None
                await snooze(call.session, c, until, **kw)
            elif body.action == "priority":
                if not isinstance(value, str):
                    raise InvalidAction("priority: value is low, normal, high or urgent")
                await set_priority(call.session, c, value, **kw)
            else:  # tag
                tags = [value] if isinstance(value, str) else value
                if tags is None:
                    raise InvalidAction("tag: value is the list of the conversation's tags")
                try:
                    await set_tags(call.session, c, replace=tags, **kw)
                except InvalidAction as exc:  # CONTRACT.md: a bad tag is a 400
                    raise ApiError(400, str(exc)) from None
        except InvalidAction as exc:
            raise ApiError(422, str(exc)) from None
        return Answer(200, _summary(c), c.id)

    async def report(call: Call) -> Answer:
        q: ReportQuery = call.query
        try:
            since = parse_duration(q.since)
        except ValueError as exc:
            raise ApiError(422, f"since: {exc}") from None
        if since.total_seconds() <= 0:
            raise ApiError(422, "since: must be longer than 0")
        return Answer(200, await build_report(
            call.session, since=since, now=call.now, calendar=services.calendar, by=q.by,
            filters=Filters(channel=q.channel or None, tag=q.tag or None)))

    async def get_contact(call: Call) -> Answer:
        return Answer(200, await _contact_view(call, await _contact(call)))

    async def patch_contact(call: Call) -> Answer:
        body: ContactPatch = call.body
        contact = await _contact(call)
        try:
            await change_contact(call.session, contact, name=body.name, tags=body.tags,
                                 language=body.language, actor=f"api:{call.caller.name}",
                                 now=call.now)
        except ContactError as exc:
            raise ApiError(422, str(exc)) from None
        return Answer(200, await _contact_view(call, contact))

    async def export(call: Call) -> Answer:
        contact = await _contact(call)
        try:
            return Answer(200, await export_contact(call.session, contact, now=call.now))
        except ContactError as exc:
            raise ApiError(404, str(exc)) from None

    async def erase(call: Call) -> Answer:
        contact = await _contact(call)
        report = await erase_contact(call.session, contact, actor=f"api:{call.caller.name}",
                                     now=call.now)

        async def finish() -> None:
            await finish_erasure(services.store, services.attachments, report)

        call.after_commit.extend([finish, services.kick_outbox])
        return Answer(204)

    async def inbound(call: Call) -> Answer:
        item: LoggedContact = call.body
        try:
            reference, created = await services.intake.record(item, token=call.caller.name)
        except IntakePending as exc:
            return Answer(202, {"reference": None, "error": f"{exc}: repeat the request (same "
                                                            "external_id) to get it"},
                          final=False)
        except IntakeError as exc:
            raise ApiError(422, str(exc)) from None
        number = int(reference.removeprefix("FD-"))
        return Answer(201 if created else 200, {"reference": reference}, number)

    conv = f"{PREFIX}/conversations/{{ref}}"
    contact = f"{PREFIX}/contacts/{{id}}"
    ident: dict[str, Literal["string", "integer"]] = {"id": "integer"}
    no_contact = ("No such contact (or it was erased)", ErrorOut)
    ref: dict[str, Literal["string", "integer"]] = {"ref": "string"}
    return [
        Operation("GET", f"{PREFIX}/conversations", "listConversations",
                  "Conversations, newest first, a page at a time", list_conversations,
                  {200: ("A page", ConversationPage)}, query=ConversationQuery,
                  description="`tag` matches the conversation's or its contact's tags; "
                              "`contact` is a contact id or address; `q` words in the "
                              "messages. Pass `next_cursor` as `cursor` for the next page: "
                              "conversations added meanwhile never make a page repeat or skip "
                              "one."),
        Operation("GET", conv, "showConversation", "One conversation with its messages (the "
                  "`frontdesk show --json` object)", show,
                  {200: ("The conversation", ConversationDetail), 404: _NOT_FOUND},
                  path_types=ref, path_examples=REF_EXAMPLE),
        Operation("POST", f"{conv}/replies", "replyToConversation",
                  "A staff reply, sent on the customer's channel like a Slack reply", reply,
                  {202: ("Queued to be sent", MessageOut), 404: _NOT_FOUND,
                   409: ("There is nothing to answer", ErrorOut)},
                  body=ReplyIn, path_types=ref, path_examples=REF_EXAMPLE, idempotent=True),
        Operation("POST", f"{conv}/notes", "addNote", "An internal note (never sent)", note,
                  {201: ("The note", MessageOut), 404: _NOT_FOUND}, body=NoteIn,
                  path_types=ref, path_examples=REF_EXAMPLE, idempotent=True),
        Operation("POST", f"{conv}/actions", "actOnConversation",
                  "Resolve, reopen, assign, snooze, set the priority or the tags", action,
                  {200: ("The conversation after the action", ConversationSummary),
                   404: _NOT_FOUND},
                  body=ActionIn, path_types=ref, path_examples=REF_EXAMPLE, idempotent=True),
        Operation("POST", f"{PREFIX}/inbound", "logContact",
                  "A contact staff took by phone, in person or by letter: a conversation with "
                  "the SLA, acknowledgement and Slack card of any other", inbound,
                  {201: ("Logged: the new conversation", InboundOut),
                   200: ("This external_id was logged before: its conversation", InboundOut),
                   202: ("Stored, not yet a conversation: repeat the request", InboundOut)},
                  body=LoggedContact, idempotent=True, own_transactions=True,
                  description="The contact is found or made by the email or phone given. "
                              "Replies go to the email, else by SMS; with neither, a staff "
                              "reply is kept as a note saying to call the customer back."),
        Operation("GET", contact, "showContact", "A contact: name, tags, identities and "
                  "conversations", get_contact, {200: ("The contact", ContactOut),
                                                 404: no_contact},
                  path_types=ident, path_examples={"id": 1}),
        Operation("PATCH", contact, "changeContact", "Name, tags and language of a contact "
                  "(SLA policies and routes use the tags from its next conversation)",
                  patch_contact, {200: ("The contact", ContactOut), 404: no_contact},
                  body=ContactPatch, path_types=ident, path_examples={"id": 1}),
        Operation("GET", f"{contact}/export", "exportContact", "Everything stored about a "
                  "person, as one JSON document (as `frontdesk contact export`)", export,
                  {200: ("The export", ExportOut), 404: no_contact}, path_types=ident,
                  path_examples={"id": 1}),
        Operation("DELETE", contact, "eraseContact", "GDPR erasure (as `frontdesk contact "
                  "erase`): identities, names, texts and files go; anonymous conversation "
                  "shells stay for the figures", erase,
                  {204: ("Erased", None), 404: no_contact}, path_types=ident,
                  path_examples={"id": 1}),
        Operation("GET", f"{PREFIX}/report", "report", "Service figures (the `frontdesk "
                  "report --json` object)", report, {200: ("The figures", ReportOut)},
                  query=ReportQuery),
    ]


def _tags_of(c: Conversation) -> set[str]:
    return {*(c.tags or []), *contact_tags(c.contact)}

