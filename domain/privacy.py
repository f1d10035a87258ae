"""Contact administration and the GDPR: tags and language, the export of everything stored about a
person, and their erasure.

Tags live in ``contacts.tags`` (a JSON object), read by SLA policies and the Slack desk's routes
(:func:`frontdesk.domain.sla.contact_tags`: keys whose value is ``true``, and the items of a
``"tags"`` list) and by the scheduler's wording (``"language"``). :func:`change_contact` keeps
that one shape: every tag a ``true`` key, the language only in ``"language"`` (shown and set as the
tag ``lang:de``), so the next conversation of the contact picks a ``vip`` policy or route up with
no more work.

:func:`export_contact` is one JSON document of what the store holds about the person.
:func:`erase_contact` deletes it in one transaction and leaves each conversation as an anonymous
shell (status, times, channel, SLA fields, rating, message rows without their words) so the
figures stay right; :func:`finish_erasure`, after the commit, deletes the attachment files no
other message uses and makes the store's files forget: on SQLite the erasing transaction runs
with ``PRAGMA secure_delete`` and rebuilds the full-text index's segments ('optimize'), and
afterwards ``VACUUM`` rewrites the file without the free space an earlier update may have left
and a ``wal_checkpoint(TRUNCATE)`` empties the ``-wal`` file; on PostgreSQL a plain ``VACUUM`` of
the touched tables removes the dead rows (and their entries in the GIN search index). Copies the
Slack desk posted in threads are deleted by outbox rows (kind ``slack``, op ``erase``) written in
the erasing transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain import cc as cc_list
from frontdesk.domain.contacts import ContactError, root_contact
from frontdesk.domain.conversations import iso
from frontdesk.storage.attachments import AttachmentStore
from frontdesk.storage.clock import utcnow
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Acknowledgement,
    ApiIdempotency,
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    IdentityLink,
    InboundJournal,
    Message,
    Outbox,
    SlackThread,
)

log = logging.getLogger(__name__)

MAX_TAGS = 50
ERASED_KEY = "erased_at"
"""The key of ``contacts.tags`` that marks an erased contact (its value a time, not a tag)."""
SLACK_KIND = "slack"
"""The Slack desk's outbox kind (frontdesk.daemon.desk.queue.KIND); op ``erase`` deletes a
thread's posts."""
_PLAIN_TAG = re.compile(r"^[a-z0-9][a-z0-9_:-]{0,49}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})?$")
_RESERVED = frozenset({"tags", "language", ERASED_KEY})
_SAFE_EVENT_KEYS = frozenset({
    "channel", "via", "status", "priority", "previous", "kind", "policy", "clock", "level",
    "action", "state", "source", "op", "type", "automated", "attempt", "merged", "kept",
    "journal_id", "link_id", "rating", "score"})
_SAFE_OUTBOX_KEYS = frozenset({"channel", "op", "slack_channel", "target", "type", "kind"})
_TOUCHED_TABLES = ("messages", "inbound_journal", "contacts", "identities", "attachments",
                   "conversations", "events", "outbox", "identity_links", "acknowledgements",
                   "slack_threads")


# --- tags ------------------------------------------------------------------------------------

def contact_tag(value: str) -> str:
    """A contact tag as stored and shown: 1-50 lower-case letters, digits, ``-``, ``_`` and
    ``:``; ``lang:`` and a language code (``lang:de``, ``lang:pt-br``) names the language.
    Raises :class:`ContactError` naming what is wrong."""
    tag = str(value).strip().lower()
    if tag.startswith("lang:"):
        if not _LANGUAGE.match(tag.removeprefix("lang:")):
            raise ContactError(f"{value!r} is not a tag: a language is lang: and a language "
                               "code like de, en or pt-br")
        return tag
    if not _PLAIN_TAG.match(tag):
        raise ContactError(f"{value!r} is not a tag: 1-50 lower-case letters, digits, '-', '_' "
                           "and ':' (a language is lang:de)")
    if tag in _RESERVED:
        raise ContactError(f"{tag!r} is a reserved word, not a tag")
    return tag


def normal_language(value: str) -> str:
    """A language code as stored (``de``, ``pt-br``); raises :class:`ContactError`."""
    code = str(value).strip().lower().replace("_", "-")
    if not _LANGUAGE.match(code):
        raise ContactError(f"{value!r} is not a language code like de, en or pt-br")
    return code


def _plain_tags(tags: Mapping[str, Any]) -> set[str]:
    found = {str(k).lower() for k, v in tags.items() if v is True}
    listed = tags.get("tags")
    if isinstance(listed, list):
        found |= {str(t).lower() for t in listed}
    return found - _RESERVED


def _language_of(tags: Mapping[str, Any]) -> str | None:
    value = tags.get("language")
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def contact_tag_list(contact: Contact) -> list[str]:
    """The contact's tags, sorted and lower-case, its language shown as ``lang:de``."""
    tags = contact.tags or {}
    found = _plain_tags(tags)
    spoken = _language_of(tags)
    if spoken:
        found.add(f"lang:{spoken}")
    return sorted(found)


def is_erased(contact: Contact) -> bool:
    return bool((contact.tags or {}).get(ERASED_KEY))


async def live_contact(session: AsyncSession, contact: Contact) -> Contact:
    """The contact a merged one lives on; an erased one is not found (:class:`ContactError`)."""
    contact = await root_contact(session, contact)
    if is_erased(contact):
        raise ContactError(f"no contact {contact.id}")
    return contact


def _split(tags: Iterable[str]) -> tuple[set[str], str | None, bool]:
    """Plain tags, the language a ``lang:`` tag names, and whether one was given."""
    plain: set[str] = set()
    spoken: set[str] = set()
    for raw in tags:
        tag = contact_tag(raw)
        if tag.startswith("lang:"):
            spoken.add(normal_language(tag.removeprefix("lang:")))
        else:
            plain.add(tag)
    if len(spoken) > 1:
        raise ContactError(f"a contact speaks one language here, not {len(spoken)} "
                           f"({', '.join(sorted('lang:' + s for s in spoken))})")
    return plain, next(iter(spoken), None), bool(spoken)


async def change_contact(session: AsyncSession, contact: Contact, *, name: str | None = None,
                         tags: Iterable[str] | None = None, add: Iterable[str] = (),
                         remove: Iterable[str] = (), language: str | None = None,
                         actor: str, now: datetime) -> bool:
    """Change a contact's name (None: unchanged), tags and language; True when something changed.

    ``tags`` replaces every tag (the language too, as its ``lang:`` tag); ``add`` and ``remove``
    change some (``remove=["lang:de"]`` forgets that language); ``language`` ("de", or "" for
    none) is applied last. Every tag is checked first (:func:`contact_tag`): a bad one
    changes nothing and raises :class:`ContactError`. Audited as ``contact_changed``."""
    contact = await live_contact(session, contact)
    current = dict(contact.tags or {})
    before_plain, before_language = _plain_tags(current), _language_of(current)
    plain, spoken = set(before_plain), before_language
    if tags is not None:
        plain, spoken, _given = _split(tags)
    added, added_language, language_added = _split(add)
    removed, removed_language, _ = _split(remove)
    plain = (plain | added) - removed
    if language_added:
        spoken = added_language
    if removed_language is not None and spoken == removed_language:
        spoken = None
    if language is not None:
        spoken = normal_language(language) if language.strip() else None
    if len(plain) > MAX_TAGS:
        raise ContactError(f"a contact has at most {MAX_TAGS} tags")
    new_name = contact.name if name is None else " ".join(name.split())[:256]
    data: dict[str, Any] = {}
    if new_name != contact.name:
        data["name"] = new_name
    if plain != before_plain:
        data["added"] = sorted(plain - before_plain)
        data["removed"] = sorted(before_plain - plain)
    if spoken != before_language:
        data["language"] = spoken
    if not data:
        return False
    kept = {k: v for k, v in current.items()
            if k not in ("tags", "language") and v is not True}
    kept.update({t: True for t in sorted(plain)})
    if spoken:
        kept["language"] = spoken
    contact.name, contact.tags, contact.updated_at = new_name, kept, now
    session.add(Event(kind="contact_changed", actor=actor, contact_id=contact.id,
                      created_at=now, data=data))
    await session.flush()
    log.info("contact %d changed by %s (%s)", contact.id, actor, ", ".join(sorted(data)))
    return True


# --- export ----------------------------------------------------------------------------------

async def _family(session: AsyncSession, contact: Contact) -> list[int]:
    """The contact and every contact merged into it (at any depth)."""
    ids = [contact.id]
    frontier = [contact.id]
    while frontier:
        found = list((await session.execute(
            select(Contact.id).where(Contact.merged_into_id.in_(frontier))
        )).scalars())
        frontier = [i for i in found if i not in ids]
        ids += frontier
    return ids


def _message_export(m: Message) -> dict[str, Any]:
    return {"id": m.id, "direction": m.direction, "author": m.author,
            "author_name": m.author_name, "channel": m.channel, "external_id": m.external_id,
            "address": m.address, "subject": m.subject, "text": m.text, "text_new": m.text_new,
            "html": m.html, "headers": dict(m.headers or {}), "automated": m.automated,
            "note": m.is_note, "delivery_status": m.delivery_status,
            "failure_reason": m.failure_reason, "created_at": iso(m.created_at),
            "sent_at": iso(m.sent_at),
            "attachments": [{"filename": a.filename, "content_type": a.content_type,
                             "size": a.size, "sha256": a.sha256} for a in m.attachments]}


def _conversation_export(c: Conversation, messages: list[Message]) -> dict[str, Any]:
    return {"id": c.id, "reference": c.reference, "channel": c.channel, "status": c.status,
            "priority": c.priority, "subject": c.subject, "inbox_address": c.inbox_address,
            "assignee": c.assignee, "tags": list(c.tags or []), "cc": cc_list.active(c.cc),
            "resolution_note": c.resolution_note, "sla_policy": c.sla_policy,
            "created_at": iso(c.created_at), "updated_at": iso(c.updated_at),
            "first_response_due_at": iso(c.first_response_due_at),
            "first_responded_at": iso(c.first_responded_at),
            "resolved_at": iso(c.resolved_at), "rating": c.rating, "rated_at": iso(c.rated_at),
            "messages": [_message_export(m) for m in messages]}


async def export_contact(session: AsyncSession, contact: Contact, *,
                         now: datetime | None = None) -> dict[str, Any]:
    """Everything stored about the person as one JSON-serialisable document: the contact (and
    the contacts merged into it), identities, conversations with their messages (texts, headers,
    addresses) and attachment metadata, the events about them, identity links and
    acknowledgements. An erased contact is not found (:class:`ContactError`)."""
    contact = await live_contact(session, contact)
    ids = await _family(session, contact)
    contacts = {c.id: c for c in (await session.execute(
        select(Contact).where(Contact.id.in_(ids)))).scalars()}
    identities = (await session.execute(
        select(Identity).where(Identity.contact_id.in_(ids)).order_by(Identity.id)
    )).scalars().all()
    conversations = list((await session.execute(
        select(Conversation).where(Conversation.contact_id.in_(ids)).order_by(Conversation.id)
    )).unique().scalars())
    conversation_ids = [c.id for c in conversations]
    by_conversation: dict[int, list[Message]] = {c: [] for c in conversation_ids}
    message_ids: list[int] = []
    if conversation_ids:
        for m in (await session.execute(
                select(Message).where(Message.conversation_id.in_(conversation_ids))
                .order_by(Message.id))).scalars():
            by_conversation[m.conversation_id].append(m)
            message_ids.append(m.id)
    about = [Event.contact_id.in_(ids)]
    if conversation_ids:
        about.append(Event.conversation_id.in_(conversation_ids))
    events = (await session.execute(
        select(Event).where(or_(*about)).order_by(Event.id))).scalars().all()
    links = (await session.execute(
        select(IdentityLink).where(IdentityLink.contact_id.in_(ids)).order_by(IdentityLink.id)
    )).scalars().all()
    acks = (await session.execute(
        select(Acknowledgement).where(Acknowledgement.conversation_id.in_(conversation_ids))
        .order_by(Acknowledgement.id))).scalars().all() if conversation_ids else []
    return {
        "exported_at": iso(now or utcnow()),
        "contact": {"id": contact.id, "name": contact.name,
                    "tags": contact_tag_list(contact),
                    "language": _language_of(contact.tags or {}),
                    "created_at": iso(contact.created_at),
                    "updated_at": iso(contact.updated_at)},
        "merged_contacts": [{"id": c.id, "name": c.name, "created_at": iso(c.created_at)}
                            for i, c in sorted(contacts.items()) if i != contact.id],
        "identities": [{"channel": i.channel, "address": i.address,
                        "created_at": iso(i.created_at)} for i in identities],
        "conversations": [_conversation_export(c, by_conversation[c.id])
                          for c in conversations],
        "events": [{"id": e.id, "kind": e.kind, "actor": e.actor,
                    "created_at": iso(e.created_at), "contact_id": e.contact_id,
                    "conversation_id": e.conversation_id, "message_id": e.message_id,
                    "data": e.data} for e in events],
        "identity_links": [{"channel": lk.channel, "address": lk.address, "state": lk.state,
                            "requested_by": lk.requested_by,
                            "conversation_id": lk.conversation_id,
                            "created_at": iso(lk.created_at),
                            "expires_at": iso(lk.expires_at),
                            "verified_at": iso(lk.verified_at)} for lk in links],
        "acknowledgements": [{"conversation_id": a.conversation_id, "channel": a.channel,
                              "recipient": a.recipient, "created_at": iso(a.created_at)}
                             for a in acks],
    }


# --- erasure ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErasureReport:
    """What :func:`erase_contact` erased (counts only), and what :func:`finish_erasure` still
    has to do after the commit (``files``: SHA-256 names of attachment files to delete unless
    another message uses them)."""

    contact_id: int
    counts: dict[str, int]
    files: tuple[str, ...] = ()
    files_deleted: int | None = None
    """Set by :func:`finish_erasure`."""
    store_compacted: bool | None = None
    """Set by :func:`finish_erasure`: the store's files were rewritten (SQLite: VACUUM and an
    emptied WAL; PostgreSQL: VACUUM of the touched tables)."""
    notes: tuple[str, ...] = field(default=())

    def view(self) -> dict[str, Any]:
        return {"contact_id": self.contact_id, "erased": dict(self.counts),
                "files_deleted": self.files_deleted, "store_compacted": self.store_compacted,
                "notes": list(self.notes)}


def _scrub_event(data: Mapping[str, Any] | None) -> dict[str, Any]:
    kept = {k: v for k, v in (data or {}).items()
            if k in _SAFE_EVENT_KEYS and (v is None or isinstance(v, bool | int | float)
                                          or (isinstance(v, str) and len(v) <= 64))}
    return {**kept, "erased": True}


def _scrub_outbox(row: Outbox) -> dict[str, Any]:
    payload = row.payload or {}
    if row.kind == "deliver":  # still an OutboundMessage, with nothing of the person's
        return {"channel": str(payload.get("channel") or ""), "to_address": "", "text": ""}
    kept = {k: v for k, v in payload.items() if k in _SAFE_OUTBOX_KEYS and isinstance(v, str)}
    if row.kind == SLACK_KIND:
        kept["op"] = "erase"  # retried by hand it deletes nothing: it names no message
    return {**kept, "erased": True}


async def erase_contact(session: AsyncSession, contact: Contact, *, actor: str,
                        now: datetime) -> ErasureReport:
    """Erase a person (the contact, and every contact merged into it) in the caller's
    transaction: identities, names, identity links, the words of every message of their
    conversations (text, quoted part, HTML, headers, subject, address; inbound and outbound,
    notes too) and the raw inbound messages they came from, attachment rows, acknowledgement
    recipients, the personal part of their events' data and outbox payloads (pending work for
    them is cancelled), the Slack threads' records (an outbox row deletes the posts in Slack).

    Conversations stay as anonymous shells (status, times, channel, SLA fields, rating, tags,
    message rows without words) so the figures stay right; the contact stays as an empty row
    marked erased, which export and every other lookup here treat as not found. Audited as
    ``contact_erased`` with the actor and counts only. Call :func:`finish_erasure` after the
    commit for the attachment files and the store's files."""
    contact = await live_contact(session, contact)
    ids = await _family(session, contact)
    sqlite = session.get_bind().dialect.name == "sqlite"
    secure_before: Any = None
    if sqlite:
        secure_before = (await session.execute(text("PRAGMA secure_delete"))).scalar()
        await session.execute(text("PRAGMA secure_delete = ON"))
    try:
        report = await _erase(session, contact, ids, actor=actor, now=now, sqlite=sqlite)
    finally:
        if sqlite and not secure_before:
            with contextlib.suppress(Exception):
                await session.execute(text("PRAGMA secure_delete = OFF"))
    log.info("contact %d erased by %s (%s)", contact.id, actor,
             ", ".join(f"{k} {v}" for k, v in report.counts.items() if v))
    return report


_NO_SYNC = {"synchronize_session": False}


async def _erase(session: AsyncSession, contact: Contact, ids: list[int], *, actor: str,
                 now: datetime, sqlite: bool) -> ErasureReport:
    conversation_ids = list((await session.execute(
        select(Conversation.id).where(Conversation.contact_id.in_(ids)).order_by(Conversation.id)
    )).scalars())
    messages = select(Message.id).where(Message.conversation_id.in_(conversation_ids))
    counts: dict[str, int] = {"contacts": len(ids), "conversations": len(conversation_ids)}

    files = tuple(sorted(set((await session.execute(
        select(Attachment.sha256).where(Attachment.message_id.in_(messages))
    )).scalars())))
    counts["attachments"] = _rows(await session.execute(
        delete(Attachment).where(Attachment.message_id.in_(messages))
        .execution_options(**_NO_SYNC)))
    counts["raw_messages"] = _rows(await session.execute(
        update(InboundJournal).where(or_(
            InboundJournal.message_id.in_(messages),
            InboundJournal.id.in_(select(Message.journal_id).where(
                Message.conversation_id.in_(conversation_ids),
                Message.journal_id.is_not(None)))))
        .values(raw=b"", meta={"erased": True}, error=None).execution_options(**_NO_SYNC)))
    await session.execute(
        update(Message).where(Message.conversation_id.in_(conversation_ids),
                              Message.direction == "in")
        .values(author_name="").execution_options(**_NO_SYNC))
    counts["messages"] = _rows(await session.execute(
        update(Message).where(Message.conversation_id.in_(conversation_ids))
        .values(text="", text_new=None, html=None, headers={}, subject="", address="",
                failure_reason=None, external_id=None).execution_options(**_NO_SYNC)))
    # Their addresses leave the CC lists of other people's conversations (and their audit).
    counts["cc_lists"] = await cc_list.forget(session, (await session.execute(
        select(Identity.address).where(Identity.contact_id.in_(ids),
                                       Identity.channel == "email"))).scalars())
    # Shells keep their figures (status, times, SLA, rating) but nothing is due on them any
    # more: no acknowledgement, escalation, reminder or survey about a person who is gone.
    await session.execute(
        update(Conversation).where(Conversation.id.in_(conversation_ids))
        .values(subject="", resolution_note=None, cc=[], ack_due_at=None, next_response_due_at=None,
                resolution_due_at=None, escalation_due_at=None, survey_due_at=None,
                reminder_due_at=None, next_due_at=None, snoozed_until=None)
        .execution_options(**_NO_SYNC))
    counts["api_answers"] = _rows(await session.execute(
        delete(ApiIdempotency).where(ApiIdempotency.conversation_id.in_(conversation_ids))
        .execution_options(**_NO_SYNC)))
    counts["identities"] = _rows(await session.execute(
        delete(Identity).where(Identity.contact_id.in_(ids)).execution_options(**_NO_SYNC)))

    links = list((await session.execute(select(IdentityLink.id).where(or_(
        IdentityLink.contact_id.in_(ids), IdentityLink.conversation_id.in_(conversation_ids))
    ))).scalars())
    if links:
        await session.execute(delete(IdentityLink).where(IdentityLink.id.in_(links))
                              .execution_options(**_NO_SYNC))
    counts["identity_links"] = len(links)
    await session.execute(
        update(Acknowledgement).where(Acknowledgement.conversation_id.in_(conversation_ids))
        .values(recipient="").execution_options(**_NO_SYNC))

    counts["outbox"] = await _outbox(session, conversation_ids, messages, links, now)
    counts["slack_threads"] = await _slack(session, conversation_ids, now)

    about = [Event.contact_id.in_(ids), Event.conversation_id.in_(conversation_ids),
             Event.message_id.in_(messages)]
    events = (await session.execute(select(Event).where(or_(*about)))).scalars().all()
    for e in events:
        e.data = _scrub_event(e.data)
    counts["events"] = len(events)

    for member in (await session.execute(
            select(Contact).where(Contact.id.in_(ids)))).scalars():
        member.name, member.tags, member.updated_at = "", {ERASED_KEY: iso(now)}, now
    if sqlite:
        # The FTS5 index keeps deleted words in older segments until they are merged.
        await session.execute(text("INSERT INTO messages_fts(messages_fts) VALUES ('optimize')"))
    session.add(Event(kind="contact_erased", actor=actor, contact_id=contact.id,
                      created_at=now, data={"counts": counts}))
    await session.flush()
    return ErasureReport(contact.id, counts, files)


def _rows(result: Any) -> int:
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


async def _outbox(session: AsyncSession, conversation_ids: list[int], messages: Any,
                  links: list[int], now: datetime) -> int:
    """Pending work for the person is cancelled; every row about them forgets its payload."""
    which = [Outbox.conversation_id.in_(conversation_ids), Outbox.message_id.in_(messages)]
    if links:
        which.append(Outbox.idempotency_key.in_([f"identity-link-{i}" for i in links]))
    rows = (await session.execute(select(Outbox).where(or_(*which)))).scalars().all()
    for row in rows:
        row.payload = _scrub_outbox(row)
        row.last_error = None
        if row.state == "pending":
            row.state, row.done_at = "failed", now
            row.last_error = "cancelled: the contact was erased"
    return len(rows)


async def _slack(session: AsyncSession, conversation_ids: list[int], now: datetime) -> int:
    """The Slack desk's threads of these conversations: an outbox row deletes its posts in
    Slack (the root card and the bot's thread posts); the thread records go now."""
    threads = (await session.execute(
        select(SlackThread).where(SlackThread.conversation_id.in_(conversation_ids))
    )).scalars().all()
    for t in threads:
        if t.ts or t.root_attempted_at is not None:
            session.add(Outbox(
                kind=SLACK_KIND, conversation_id=t.conversation_id, message_id=None,
                payload={"op": "erase", "in_channel": t.channel_id, "ts": t.ts,
                         "reference": f"FD-{t.conversation_id}",
                         "slack_channel": t.channel_id, "target": t.channel_id},
                idempotency_key=f"slack-erase-{t.conversation_id}-{t.ts or 'unposted'}",
                state="pending", attempts=0, next_attempt_at=now, created_at=now))
        await session.delete(t)
    return len(threads)


# --- after the commit ------------------------------------------------------------------------

async def finish_erasure(store: Store, attachments: AttachmentStore, report: ErasureReport, *,
                         vacuum: bool = True) -> ErasureReport:
    """After :func:`erase_contact`'s commit: delete the attachment files no other message uses,
    then make the store's files forget what the erasure deleted: on SQLite ``VACUUM`` (unless
    ``vacuum`` is False: it rewrites the whole file, holding the writers up meanwhile) and a
    ``wal_checkpoint(TRUNCATE)`` that empties the ``-wal`` file; on PostgreSQL a plain
    ``VACUUM`` of the touched tables (unless ``vacuum`` is False). What cannot be done is
    logged and noted in the report, not raised: the erasure stands."""
    deleted = await _delete_files(store, attachments, report.files)
    try:
        if store.dialect == "sqlite":
            compacted, note = await _compact_sqlite(store, vacuum=vacuum)
        elif vacuum:
            compacted, note = await _vacuum_postgresql(store)
        else:
            compacted, note = False, ""
    except Exception as exc:  # noqa: BLE001 - the erasure is committed; say what is left
        compacted, note = False, f"compacting the store failed: {exc}"
    if note:
        log.warning("after erasing contact %d: %s", report.contact_id, note)
    return replace(report, files_deleted=deleted, store_compacted=compacted,
                   notes=(*report.notes, *([note] if note else [])))


async def _delete_files(store: Store, attachments: AttachmentStore,
                        files: tuple[str, ...]) -> int:
    if not files:
        return 0
    async with store.reader() as s:
        used = set((await s.execute(
            select(Attachment.sha256).where(Attachment.sha256.in_(files)))).scalars())
    deleted = 0
    for digest in files:
        if digest in used or not re.fullmatch(r"[0-9a-f]{64}", digest):
            continue
        path = attachments.path_for(digest)
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the attachment file %s: %s", path, exc)
    return deleted


async def _compact_sqlite(store: Store, *, vacuum: bool) -> tuple[bool, str]:
    path = store.sqlite_path
    if path is None or not Path(path).is_file():
        return False, ""
    async with store.writing():
        busy = await asyncio.to_thread(_compact_file, path, vacuum)
    if busy:
        return False, ("the WAL could not be emptied while others were reading the store; "
                       "it empties at a later checkpoint")
    return vacuum, ""


def _compact_file(path: str, vacuum: bool) -> bool:
    """VACUUM the SQLite file (``vacuum``) and empty its WAL; True when readers kept the WAL
    from emptying."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        if vacuum:
            conn.execute("VACUUM")
        # Readers finish (each try waits up to a second for them); a try can also meet the
        # journal writer's own checkpoint, which ends in moments. Give up after 15 s.
        conn.execute("PRAGMA busy_timeout = 1000")
        deadline = time.monotonic() + 15
        while True:
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if row is None or not row[0]:
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.02)
    finally:
        conn.close()


async def _vacuum_postgresql(store: Store) -> tuple[bool, str]:
    async with store.engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.exec_driver_sql("SET statement_timeout = 0")  # database.statement_timeout
        try:
            await auto.exec_driver_sql("VACUUM " + ", ".join(_TOUCHED_TABLES))
        finally:
            await auto.exec_driver_sql("RESET statement_timeout")  # back to the session's own
    return True, ""
