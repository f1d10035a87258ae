"""Live updates for open widgets: one feed of new messages from the store, fanned out to the
visitors' streams (Server-Sent Events, :mod:`frontdesk.channels.web.api`).

The hub reads the store, not this process's memory, so a reply committed by any writer (the
Slack desk, the command line, another instance on the same PostgreSQL) reaches a visitor
connected here. While at least one stream is open it asks for messages above its cursor when
woken (this instance's outbox handed a web reply over, a visitor's message was stored) and at
least every ``poll`` seconds (another process's commit; on PostgreSQL, another instance's reply
wakes it through the outbox's notification). Ids are handed out before commit, so
one may become visible after a higher one: the query starts ``lookback`` seconds' worth of
cursor behind, and ids already fanned out are skipped. Each stream de-duplicates as well.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from frontdesk.channels.web.records import (
    message_ids_after,
    message_view,
    messages_by_id,
    newest_message_id,
    shown,
)
from frontdesk.storage.db import Store

log = logging.getLogger(__name__)


class Subscriber:
    """One open stream: the visitor, their conversations, and a queue of message views."""

    max_queued = 500

    def __init__(self, visitor: str, conversations: Sequence[int]) -> None:
        self.visitor = visitor
        self.conversations = set(conversations)
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.overflowed = False

    def put(self, view: dict[str, Any] | None) -> None:
        if self.queue.qsize() >= self.max_queued:
            # A stream this far behind is ended; the widget reconnects and catches up from
            # its last id.
            self.overflowed = True
            view = None
        self.queue.put_nowait(view)


class StreamHub:
    first_look = 100
    """How many ids before the newest the first read after a quiet spell covers."""

    poll = 1.0
    """Seconds between reads while streams are open and nothing woke the hub."""

    def __init__(self, store: Store, *, lookback: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._lookback = lookback
        self._clock = clock
        self._visitors: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self._by_conversation: dict[int, set[Subscriber]] = collections.defaultdict(set)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cursor: int | None = None
        self._marks: collections.deque[tuple[float, int]] = collections.deque()
        self._fanned: set[int] = set()
        self._stopping = False
        self._closed = False  # stopped with the channel: a late subscriber ends at once

    @property
    def open_streams(self) -> int:
        return sum(len(s) for s in self._visitors.values())

    def subscribe(self, visitor: str, conversations: Sequence[int]) -> Subscriber:
        sub = Subscriber(visitor, conversations)
        if self._closed:  # the browser reconnected while the daemon stops
            sub.queue.put_nowait(None)
            return sub
        self._visitors[visitor].add(sub)
        for conversation in sub.conversations:
            self._by_conversation[conversation].add(sub)
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="web-streams")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._visitors.get(sub.visitor)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._visitors[sub.visitor]
        for conversation in sub.conversations:
            listeners = self._by_conversation.get(conversation)
            if listeners is not None:
                listeners.discard(sub)
                if not listeners:
                    del self._by_conversation[conversation]

    def wake(self) -> None:
        self._wake.set()

    def open(self) -> None:
        """Take subscribers again (the channel started after a stop)."""
        self._closed = False

    async def stop(self) -> None:
        self._stopping = True
        self._closed = True
        for subs in list(self._visitors.values()):
            for sub in list(subs):
                sub.queue.put_nowait(None)
        self._visitors.clear()
        self._by_conversation.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = self.poll
        while not self._stopping and self._visitors:
            self._wake.clear()  # before the step: a wake during it is not lost
            try:
                await self._step()
                delay = self.poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is away; streams wait
                log.warning("web: reading new messages for the open widgets failed (%s); "
                            "retrying", type(exc).__name__)
                delay = min(delay * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
        self._cursor = None  # nobody listens: start from the newest message next time
        self._marks.clear()
        self._fanned.clear()

    def _floor(self, now: float) -> int:
        """The cursor as it was ``lookback`` seconds ago (ids may commit out of order)."""
        assert self._cursor is not None
        while len(self._marks) > 1 and self._marks[1][0] <= now - self._lookback:
            self._marks.popleft()
        return self._marks[0][1] if self._marks else self._cursor

    async def _step(self) -> None:
        now = self._clock()
        async with self._store.reader() as s:
            if self._cursor is None:
                # A stream read its history just before: look back a little, so a message
                # committed between that read and this one is not missed (streams skip what
                # they already sent).
                self._cursor = await newest_message_id(s)
                self._marks.append((now, max(0, self._cursor - self.first_look)))
            floor = self._floor(now)
            # The ids alone (an index scan), then whole rows only for ids not fanned out yet:
            # the look-back costs little however busy the last seconds were.
            ids = [i for i in await message_ids_after(s, floor) if i not in self._fanned]
            rows = await messages_by_id(s, ids) if ids else []
            views = [(m, message_view(m)) for m in rows if shown(m)]
        for m, view in views:
            self._fanned.add(m.id)
            if m.channel == "web" and m.direction == "in" and m.address in self._visitors:
                for sub in self._visitors[m.address]:  # a new conversation of theirs
                    sub.conversations.add(m.conversation_id)
                    self._by_conversation[m.conversation_id].add(sub)
            for sub in self._by_conversation.get(m.conversation_id, ()):
                sub.put(view)
        for m in rows:
            self._fanned.add(m.id)  # not shown ones too: never read again
        if rows:
            self._cursor = max(self._cursor, rows[-1].id)
        self._marks.append((now, self._cursor))
        self._fanned = {i for i in self._fanned if i > floor}
