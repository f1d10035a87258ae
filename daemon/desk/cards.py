"""The root card of each conversation's thread, built from the store and kept current.

A conversation's thread starts with its root message: the card (:class:`blocks.Card`) of the
conversation, its contact and their history, with the buttons. :meth:`RootCards.ensure_root`
posts it the first time the conversation needs its thread; a root post that may have gone out
before a crash is looked up by its message metadata before it is posted again.
:meth:`RootCards.refresh_roots` follows the events audit and queues a ``chat.update`` of the
root of every conversation that changed, whoever changed it (Slack, the command line, the
scheduler); :meth:`RootCards.update` sends it only when the card looks different.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.config.schema import SlackConfig
from frontdesk.daemon.desk import blocks
from frontdesk.daemon.desk.api import CALL_ERRORS, SlackApi, describe
from frontdesk.daemon.desk.queue import SlackQueue, insert_once
from frontdesk.domain import cc as cc_list
from frontdesk.domain.conversations import CALLBACK_NEEDED
from frontdesk.domain.messages import Receipt
from frontdesk.domain.similar import SimilarConversations, Titled
from frontdesk.storage.db import Store
from frontdesk.storage.models import (
    Attachment,
    Contact,
    Conversation,
    Event,
    Identity,
    Message,
    SlackState,
    SlackThread,
)
from frontdesk.storage.together import Together

log = logging.getLogger(__name__)

ROOT_METADATA = "frontdesk_conversation"
_CURSOR = "events_cursor"
_QUIET_EVENTS = frozenset({
    "message_sent", "delivery_failed",  # a send and its outcome
    "acknowledgement_sent", "acknowledgement_skipped",  # the card shows neither
    "conversation_created",  # in the transaction that queues the root: it is posted showing it
})
"""Events that never change a root card, so they queue no refresh of it."""
FILES_FETCHED = "attachments_fetched"
"""The audit event of files a chat channel fetched after the message (channels.chat_records)."""


@dataclass(frozen=True)
class Thread:
    """A conversation's thread in Slack, its root posted."""

    conversation_id: int
    reference: str
    channel_id: str
    ts: str
    rendered_hash: str | None
    saved: bool = True
    """False for a root just posted (or found): :meth:`RootCards.save` writes it, with the
    outbox row's mark."""


def _shown_text(m: Any) -> str:
    """The new part of a customer's reply when the parser found one, else the whole text."""
    return str(getattr(m, "text_new", None) or m.text or "")


_HAS_FILES = exists().where(Attachment.message_id == Message.id).label("has_files")
"""Whether a message has files: most have none, and their files are then not read at all."""


def _card_statements() -> tuple[Any, ...]:
    """What :meth:`RootCards.cards` reads, built once."""
    c = Conversation
    ids: Any = bindparam("ids", expanding=True)
    contacts: Any = bindparam("contacts", expanding=True)
    cards = (select(c.id, c.contact_id, c.channel, c.subject, c.status, c.priority, c.assignee,
                    c.created_at, c.first_response_due_at, c.first_responded_at,
                    c.snoozed_until, c.escalation_level, c.inbox_address, c.tags,
                    c.resolution_note, c.cc, Contact.name.label("contact_name"))
             .join(Contact, Contact.id == c.contact_id).where(c.id.in_(ids)))
    identities = (select(Identity.contact_id, Identity.channel, Identity.address)
                  .where(Identity.contact_id.in_(contacts)).order_by(Identity.id))
    ranked = (select(Message.id, func.row_number().over(
                  partition_by=Message.conversation_id, order_by=Message.id).label("n"))
              .where(Message.conversation_id.in_(ids), Message.direction == "in").subquery())
    firsts = (select(Message.id, Message.conversation_id, Message.text, Message.text_new,
                     Message.automated, _HAS_FILES)
              .join(ranked, ranked.c.id == Message.id).where(ranked.c.n == 1))
    files = (select(Attachment.message_id, Attachment.filename, Attachment.size)
             .where(Attachment.message_id.in_(bindparam("messages", expanding=True)))
             .order_by(Attachment.id))
    history = (select(c.id, c.contact_id, c.status, c.subject)
               .where(c.contact_id.in_(contacts), c.id < bindparam("below"))
               .order_by(c.id))
    return cards, identities, firsts, files, history


_CARDS, _IDENTITIES, _FIRSTS, _FILES, _HISTORY = _card_statements()
THREADS_OF = select(SlackThread).where(
    SlackThread.conversation_id.in_(bindparam("ids", expanding=True)))
_LINES = select(Message.id, Message.conversation_id, Message.is_note, Message.direction,
                Message.author, Message.author_name, Message.address, Message.channel,
                Message.text, Message.text_new, Message.automated, _HAS_FILES).where(
    Message.id.in_(bindparam("ids", expanding=True)))
_MARK = (update(SlackThread)
         .where(SlackThread.conversation_id.in_(bindparam("ids", expanding=True)))
         .values(root_attempted_at=bindparam("now", type_=SlackThread.updated_at.type),
                 updated_at=bindparam("now", type_=SlackThread.updated_at.type))
         .execution_options(synchronize_session=False))
"""What a thread post reads and a root's post writes first, built once."""


async def _files(s: AsyncSession, messages: Iterable[Any]) -> dict[int, list[tuple[str, int]]]:
    """The (name, size) of each message's files, for the message rows that have any."""
    files: dict[int, list[tuple[str, int]]] = {}
    with_files = [m.id for m in messages if m.has_files]
    if with_files:
        for message_id, filename, size in (await s.execute(
                _FILES, {"messages": with_files})).all():
            files.setdefault(message_id, []).append((filename, size))
    return files


class RootCards:
    """Builds, posts and refreshes root cards; renders stored messages for the thread."""

    def __init__(self, config: SlackConfig, store: Store, api: SlackApi, queue: SlackQueue,
                 clock: Callable[[], datetime],
                 similar: SimilarConversations | None = None) -> None:
        self.config = config
        self.similar = similar
        self.store = store
        self.api = api
        self.queue = queue
        self.clock = clock
        # What concurrent sends ask at the same moment, asked once (storage.together).
        self._thread = Together(self._threads)
        self._rendering = Together(self._render)
        self._attempting = Together(self._write_marks)
        self._lines = Together(self._thread_lines)

    # -- what the root and the thread show ---------------------------------------------------------

    async def card(self, s: AsyncSession, conversation_id: int) -> blocks.Card:
        return (await self.cards(s, [conversation_id]))[conversation_id]

    async def cards(self, s: AsyncSession, ids: list[int]) -> dict[int, blocks.Card]:
        """The cards of the conversations ``ids``, in five queries whatever their number. They
        are read as rows, not as objects, by statements built once: a card is all they are
        for, and building a card's objects (the conversation, its contact and their
        identities, the first message and its files) and its statements cost more than twice
        what reading it did."""
        conversations = (await s.execute(_CARDS, {"ids": ids})).all()
        contacts = sorted({row.contact_id for row in conversations})
        identities: dict[int, list[tuple[str, str]]] = {}
        for contact_id, channel, address in (await s.execute(
                _IDENTITIES, {"contacts": contacts})).all():
            identities.setdefault(contact_id, []).append((channel, address))
        firsts = {m.conversation_id: m for m in (await s.execute(_FIRSTS, {"ids": ids})).all()}
        files = await _files(s, firsts.values())
        history: dict[int, list[Any]] = {}  # each contact's conversations, oldest first
        for past in (await s.execute(_HISTORY, {"contacts": contacts,
                                                "below": max(ids)})).all():
            history.setdefault(past.contact_id, []).append(past)
        similar = await self._similar(s, [row for row in conversations
                                          if row.status != "resolved"])
        cap = self.config.upload_max
        cards = {}
        for row in conversations:
            first = firsts.get(row.id)
            earlier = [h for h in history.get(row.contact_id, []) if h.id < row.id]
            last = earlier[-1] if earlier else None
            cards[row.id] = blocks.Card(
                conversation_id=row.id, reference=f"FD-{row.id}", channel=row.channel,
                subject=row.subject, status=row.status, priority=row.priority,
                assignee=row.assignee, created_at=row.created_at,
                first_response_due_at=row.first_response_due_at,
                first_responded_at=row.first_responded_at, snoozed_until=row.snoozed_until,
                escalation_level=row.escalation_level, contact_name=row.contact_name,
                identities=tuple(identities.get(row.contact_id, ())),
                earlier=len(earlier),
                last_earlier=(f"FD-{last.id}", last.status, last.subject) if last else None,
                first_text=_shown_text(first) if first else "",
                first_automated="automated" if first is not None and first.automated else None,
                attachments=tuple(blocks.file_name(name, size, cap)
                                  for name, size in files.get(first.id, ())) if first else (),
                inbox_address=row.inbox_address, replies_enabled=self.config.replies_enabled,
                tags=tuple(row.tags or ()), resolution_note=row.resolution_note,
                similar=similar.get(row.id, ()), cc=tuple(cc_list.active(row.cc)))
        return cards

    async def _similar(self, s: AsyncSession, conversations: Sequence[Titled],
                       ) -> dict[int, tuple[tuple[str, str, str | None, str | None], ...]]:
        """For each open conversation, up to three resolved ones like it, with their links."""
        if self.similar is None or not conversations:
            return {}
        hits = await self.similar.similar_to_each(s, conversations, limit=3)
        links = await self.links(s, [h.conversation_id for found in hits.values()
                                     for h in found])
        return {i: tuple((h.reference, h.subject, h.resolution_note,
                          links.get(h.conversation_id)) for h in found)
                for i, found in hits.items() if found}

    async def links(self, s: AsyncSession, ids: list[int]) -> dict[int, str]:
        """Links to the Slack threads of the conversations ``ids`` that have one."""
        if not ids:
            return {}
        rows = (await s.execute(select(SlackThread.conversation_id, SlackThread.channel_id,
                                       SlackThread.ts).where(
            SlackThread.conversation_id.in_(ids), SlackThread.ts.is_not(None)))).all()
        return {i: f"https://slack.com/archives/{channel}/p{str(ts).replace('.', '')}"
                for i, channel, ts in rows}

    async def render_root(self, conversation_id: int) -> tuple[str, list[dict[str, Any]]]:
        """The root message's text and blocks; the roots rendered at the same moment (a round
        of the outbox) are read together."""
        rendered = await self._rendering(conversation_id)
        if rendered is None:
            raise LookupError(f"FD-{conversation_id} does not exist")
        return rendered

    async def _render(self, ids: list[int]) -> dict[int, tuple[str, list[dict[str, Any]]]]:
        async with self.store.reader() as s:
            cards = await self.cards(s, ids)
        return {i: blocks.root_message(card) for i, card in cards.items()}

    async def _threads(self, ids: list[int]) -> dict[int, SlackThread]:
        async with self.store.reader() as s:
            return {t.conversation_id: t for t in (await s.execute(
                THREADS_OF, {"ids": ids})).scalars()}

    async def thread_line(self, message_id: int) -> str | None:
        """A stored message as a thread post; None for a note (or a message that is gone).
        The lines asked for at the same moment are read together, as rows."""
        return await self._lines(message_id)

    async def _thread_lines(self, ids: list[int]) -> dict[int, str]:
        async with self.store.reader() as s:
            messages = (await s.execute(_LINES, {"ids": ids})).all()
            files = await _files(s, messages)
        lines = {}
        for m in messages:
            if m.is_note:
                continue
            reference = f"FD-{m.conversation_id}"
            if m.direction == "in":
                cap = self.config.upload_max
                lines[m.id] = blocks.customer_line(
                    m.author_name or m.address, m.channel, _shown_text(m),
                    reference=reference, automated="automated" if m.automated else None,
                    attachments=tuple(blocks.file_name(name, size, cap)
                                      for name, size in files.get(m.id, ())))
            else:
                lines[m.id] = blocks.outbound_line(
                    m.author_name, m.author, m.channel, m.text, reference=reference,
                    address=m.address,
                    attachments=tuple(name for name, _size in files.get(m.id, ())))
        return lines

    # -- the root message in Slack ----------------------------------------------------------------

    async def ensure_root(self, conversation_id: int, *,
                          paced: bool = False) -> tuple[Thread, bool]:
        """The conversation's root message, posted now if it is not there yet (True).
        ``paced``: the caller took the channel's posting slot (:meth:`SlackApi.pace`)."""
        reference = f"FD-{conversation_id}"
        record = await self._thread(conversation_id)  # made with the root's row, as a rule
        if record is None:
            async with self.store.session() as s:
                conversation = await s.get_one(Conversation, conversation_id)
                record = await self.queue.thread(s, conversation, self.clock())
        if record.ts:
            return Thread(conversation_id, reference, record.channel_id, record.ts,
                          record.rendered_hash), False
        if record.root_attempted_at is not None:  # an earlier try may have posted it
            found = await self._find_root(record.channel_id, reference)
            if found is not None:
                log.info("%s: found the root message an earlier attempt posted", reference)
                return Thread(conversation_id, reference, record.channel_id, found, None,
                              saved=False), False
        if not paced:
            self.api.pace(record.channel_id)
        # Marked before the card is rendered: from here on a change to the conversation queues
        # a refresh of the root (refresh_roots), before, the card shows it already.
        await self._attempting(conversation_id)
        text, root_blocks = await self.render_root(conversation_id)
        ts, channel = await self.api.post(
            record.channel_id, text=text, blocks=root_blocks, paced=True,
            metadata={"event_type": ROOT_METADATA,
                      "event_payload": {"reference": reference,
                                        "conversation_id": conversation_id}})
        return Thread(conversation_id, reference, channel, ts,
                      blocks.fingerprint(text, root_blocks), saved=False), True

    async def _write_marks(self, ids: list[int]) -> dict[int, None]:
        """Write that these roots are being posted (should the daemon die before a post is
        recorded, the next try looks for it first): the roots posted at the same moment, in
        one transaction."""
        async with self.store.session() as s:
            await s.execute(_MARK, {"ids": ids, "now": self.clock()})
        return {}

    def save(self, thread: Thread) -> Callable[[AsyncSession], Awaitable[None]]:
        """The step that writes a root just posted (or found), to run in the transaction that
        marks its outbox row sent."""
        async def write(s: AsyncSession) -> None:
            record = await s.get_one(SlackThread, thread.conversation_id)
            record.channel_id, record.ts = thread.channel_id, thread.ts
            record.rendered_hash = thread.rendered_hash
            record.updated_at = self.clock()
        return write

    async def _find_root(self, channel: str, reference: str) -> str | None:
        try:
            return await self.api.find_posted(channel, ROOT_METADATA, {"reference": reference})
        except CALL_ERRORS as exc:
            log.warning("cannot check %s for an earlier root of %s (%s); posting it",
                        channel, reference, describe(exc))
            return None

    async def update(self, thread: Thread) -> Receipt:
        """chat.update of the root with the current card, unless it shows that already; what
        it now shows is written with the outbox row's mark."""
        text, root_blocks = await self.render_root(thread.conversation_id)
        rendered = blocks.fingerprint(text, root_blocks)
        if rendered == thread.rendered_hash:
            return Receipt(remote_id=thread.ts, detail="unchanged",
                           record=None if thread.saved else self.save(thread))
        await self.api.update(thread.channel_id, thread.ts, text=text, blocks=root_blocks)
        return Receipt(remote_id=thread.ts, detail="updated",
                       record=self.save(dataclasses.replace(thread, rendered_hash=rendered)))

    # -- keeping root messages current ------------------------------------------------------------

    async def refresh_roots(self) -> int:
        """Queue a root refresh for every conversation with a thread that has new audit events;
        returns how many were queued."""
        now = self.clock()
        queued = 0
        async with self.store.session() as s:
            query = select(SlackState).where(SlackState.name == _CURSOR)
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update()
            state = (await s.execute(query)).scalars().first()
            if state is None:
                top = (await s.execute(select(func.max(Event.id)))).scalar() or 0
                await insert_once(s, SlackState, "name", name=_CURSOR, value=str(top),
                                  updated_at=now)
                return 0
            cursor = int(state.value or 0)
            rows = (await s.execute(
                select(Event.id, Event.conversation_id, Event.kind, Event.actor, Event.data,
                       Event.message_id)
                .where(Event.id > cursor).order_by(Event.id).limit(1000))).all()
            if not rows:
                return 0
            latest: dict[int, int] = {}
            callbacks = []  # staff replies nothing can carry: the thread says to call back
            notes = []  # resolved with a note elsewhere (command line, API): the thread says it
            fetched = []  # a chat channel's files, fetched after the message's thread line
            # A new conversation's first message is received in the transaction that creates
            # it: the root is posted showing it, like the creation.
            firsts = {message_id for _, _, kind, _, _, message_id in rows
                      if kind == "conversation_created" and message_id is not None}
            for event_id, conversation_id, kind, actor, data, message_id in rows:
                if conversation_id is not None and message_id is not None and \
                        kind == FILES_FETCHED and (data or {}).get("files"):
                    fetched.append((event_id, conversation_id, message_id, data["files"]))
                if conversation_id is not None and kind not in _QUIET_EVENTS and not (
                        kind == "message_received" and message_id in firsts):
                    latest[conversation_id] = event_id
                if conversation_id is not None and kind == CALLBACK_NEEDED:
                    callbacks.append((event_id, conversation_id, actor))
                if conversation_id is not None and (data or {}).get("via") != "slack" and (
                        kind == "resolution_noted"
                        or (kind == "conversation_resolved" and (data or {}).get("noted"))):
                    notes.append((event_id, conversation_id, actor))
            if latest:
                # A root not posted yet needs no refresh: it shows the conversation as it is
                # when it is posted (ensure_root marks the attempt before it renders the card).
                with_thread = (await s.execute(
                    select(SlackThread.conversation_id)
                    .where(SlackThread.conversation_id.in_(list(latest)),
                           or_(SlackThread.ts.is_not(None),
                               SlackThread.root_attempted_at.is_not(None))))).scalars().all()
                for event_id, conversation_id, actor in callbacks:
                    if conversation_id in with_thread:
                        await self.queue.text(
                            s, await s.get_one(Conversation, conversation_id),
                            blocks.callback_line(actor or "staff"), now,
                            key=f"slack-callback-{event_id}")
                for event_id, conversation_id, actor in notes:
                    conversation = await s.get_one(Conversation, conversation_id)
                    if conversation_id in with_thread and conversation.resolution_note:
                        await self.queue.text(
                            s, conversation,
                            blocks.action_line("Resolved", actor or "staff") + "\n"
                            + blocks.solved_line(conversation.resolution_note), now,
                            key=f"slack-solved-{event_id}")
                for conversation_id in with_thread:
                    conversation = await s.get_one(Conversation, conversation_id)
                    await self.queue.update(
                        s, conversation, now,
                        key=f"slack-update-{conversation_id}-{latest[conversation_id]}")
                    queued += 1
            for event_id, conversation_id, message_id, names in fetched:
                await self._queue_fetched(s, event_id, conversation_id, message_id, names, now)
            state.value, state.updated_at = str(rows[-1][0]), now
        return queued

    async def _queue_fetched(self, s: AsyncSession, event_id: int, conversation_id: int,
                             message_id: int, names: list[Any], now: datetime) -> None:
        """Upload the files a channel fetched for a customer message (Twilio media, Telegram and
        Meta files) into its thread, naming those too large to upload."""
        ids = list((await s.execute(
            select(Attachment.id).join(Message, Message.id == Attachment.message_id)
            .where(Attachment.message_id == message_id, Message.direction == "in",
                   Attachment.filename.in_([str(n) for n in names]))
            .order_by(Attachment.id))).scalars())
        if ids:
            await self.queue.files(s, await s.get_one(Conversation, conversation_id), message_id,
                                   ids, now, key=f"slack-files-{message_id}-{event_id}",
                                   announce=True)
