"""The intake of logged contacts: journal one, and answer once it is a conversation.

:class:`Intake` is what the REST API (``POST /api/v1/inbound``) and the Slack form call: it
journals the contact through the daemon's journal (commit first, like every channel), has the
processor take it at once, and answers with the conversation's reference when the row is
processed (its ``message_id`` leads to the conversation). The same ``external_id`` again —
on any of the three channels — is stored once and answers the same reference.

``frontdesk log`` writes the same row straight into the store (:func:`write_row`) and waits
for a running daemon with :func:`conversation_of`. On PostgreSQL the journal's insert trigger
wakes the daemon's processor; on SQLite the running intake watches for rows written by another
process (once a second) and wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.dialects import postgresql, sqlite

from frontdesk.channels.base import Accept
from frontdesk.channels.logged.contact import LOGGED_CHANNELS, LoggedContact, journal_row
from frontdesk.storage.clock import Clock, utcnow
from frontdesk.storage.db import Store
from frontdesk.storage.models import InboundJournal, Message, core_table

log = logging.getLogger(__name__)


class IntakeError(Exception):
    """The contact is journaled but could not become a conversation (its processing failed:
    a dead letter, see ``frontdesk journal --failed``); the text is for people."""


class IntakePending(IntakeError):
    """The contact is journaled (durable) but not processed within the wait; it becomes a
    conversation when the processor gets to it."""


async def logged_row(store: Store, external_id: str) -> tuple[str, str] | None:
    """(channel, remote id) of the journal row already holding ``external_id`` on any logged
    channel, or None."""
    t = core_table(InboundJournal)
    async with store.reader() as s:
        found = (await s.execute(
            select(t.c.channel).where(t.c.remote_id == external_id,
                                      t.c.channel.in_(LOGGED_CHANNELS))
            .order_by(t.c.id).limit(1))).scalar()
    return (str(found), external_id) if found is not None else None


async def conversation_of(store: Store, channel: str, remote_id: str, *, timeout: float,
                          kick: Callable[[], None] | None = None) -> str | None:
    """The reference of the conversation the journal row ``(channel, remote_id)`` went into,
    once processed; None if it is still pending after ``timeout`` seconds (``kick`` wakes the
    processor while waiting). Raises :class:`IntakeError` for a row that failed or is not
    there."""
    t = core_table(InboundJournal)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.01
    while True:
        async with store.reader() as s:
            row = (await s.execute(
                select(t.c.id, t.c.state, t.c.error, t.c.message_id)
                .where(t.c.channel == channel, t.c.remote_id == remote_id))).first()
            conversation = None
            if row is not None and row.message_id is not None:
                conversation = (await s.execute(
                    select(Message.conversation_id).where(Message.id == row.message_id))
                ).scalar()
        if row is None:
            raise IntakeError(f"no journal row for {channel} {remote_id!r}")
        if conversation is not None:
            return f"FD-{conversation}"
        if row.state in ("failed", "discarded") or (row.state == "done"):
            why = (row.error or "").splitlines()[0] if row.error else "no conversation was made"
            raise IntakeError(f"journal #{row.id} could not become a conversation ({row.state}: "
                              f"{why}); see `frontdesk journal --failed`")
        if loop.time() >= deadline:
            return None
        if kick is not None:
            kick()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)


async def write_row(store: Store, item: LoggedContact, *, now: Clock = utcnow) -> bool:
    """Journal ``item`` straight into the store (the command line, no daemon needed); True if
    new, False if its ``external_id`` is journaled already."""
    if await logged_row(store, item.external_id) is not None:
        return False
    channel, remote_id, raw = journal_row(item, now())
    t = core_table(InboundJournal)
    insert = sqlite.insert if store.dialect == "sqlite" else postgresql.insert
    async with store.session() as s:
        result = await s.execute(
            insert(t).values(channel=channel, remote_id=remote_id, raw=raw, meta={},
                             received_at=now(), state="pending", attempts=0)
            .on_conflict_do_nothing(index_elements=["channel", "remote_id"])
            .returning(t.c.id))
        return result.first() is not None


class Intake:
    """Records logged contacts for the daemon (see the module docstring). ``accept`` is the
    journal's, ``kick`` wakes the processor; ``timeout`` is how long :meth:`record` waits for
    the conversation. It also runs as a daemon service: on SQLite it watches the journal for
    rows ``frontdesk log`` wrote and wakes the processor."""

    name = "intake"
    in_readiness = False  # nothing outside to wait for: not listed by /readyz
    watch_every = 1.0
    """Seconds between looks for logged rows another process journaled (SQLite)."""

    def __init__(self, accept: Accept, store: Store, *, kick: Callable[[], None],
                 clock: Clock = utcnow, timeout: float = 15.0) -> None:
        self._accept = accept
        self._store = store
        self._kick = kick
        self._clock = clock
        self.timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def record(self, item: LoggedContact, *, timeout: float | None = None,
                     token: str = "") -> tuple[str, bool]:
        """Journal ``item`` and wait until it is a conversation: (its reference, True), or for
        a repeat of its ``external_id`` (any logged channel) the first one's (reference, False).
        Raises :class:`IntakePending` past ``timeout`` (default :attr:`timeout`) — the contact
        is journaled and will still become a conversation — and :class:`IntakeError` when its
        processing failed; the journal's own error when the store cannot commit. ``token``:
        the API token it came through, named in the audit."""
        found = await logged_row(self._store, item.external_id)
        if found is not None:
            channel, remote_id = found
            created = False
        else:
            channel, remote_id, raw = journal_row(item, self._clock(), token)
            created = await self._accept(channel, remote_id, raw, {})
        wait = self.timeout if timeout is None else timeout
        self._kick()
        reference = await conversation_of(self._store, channel, remote_id, timeout=wait,
                                          kick=self._kick)
        if reference is None:
            raise IntakePending(f"the {channel} contact {remote_id!r} is journaled but not yet a "
                                f"conversation after {wait:g}s; it becomes one shortly")
        if created:
            log.info("%s: %s contact logged by %s", reference, channel, item.author)
        return reference, created

    # -- as a daemon service ------------------------------------------------------------------

    async def start(self) -> None:
        self._started = True
        if self._store.dialect == "sqlite":
            self._task = asyncio.create_task(self._watch(), name="logged-intake-watch")

    async def stop(self) -> None:
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def ready(self) -> bool:
        return self._started

    async def _watch(self) -> None:
        seen = 0
        while True:
            try:
                async with self._store.reader() as s:
                    newest = (await s.execute(newest_logged(seen))).scalar()
                if newest is not None:
                    seen = newest
                    self._kick()
            except Exception as exc:  # noqa: BLE001 - the store away: the processor's backoff
                log.debug("logged intake: looking for new rows failed: %s", exc)
            await asyncio.sleep(self.watch_every)


def newest_logged(seen: int) -> Select[Any]:
    """The id of the newest journal row of a logged channel after ``seen``, or None. Looked up
    through the logged channels' own entries of the (channel, remote id) key, which stay few:
    not through the pending rows, which a flood of webhooks makes many (the look runs every
    second for as long as the backlog lasts)."""
    t = core_table(InboundJournal)
    return select(func.max(t.c.id)).where(t.c.channel.in_(LOGGED_CHANNELS), t.c.id > seen)
