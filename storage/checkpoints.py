"""Checkpoints of polling channels: where a reader got to, kept in the store.

The IMAP reader keeps ``{"uidvalidity": V, "last_uid": U}`` per mailbox folder here, written
after the journal commit of the mail up to U, so a restart or a reconnect resumes right after
it: nothing skipped, and what is read twice is a duplicate the journal already refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from frontdesk.storage.db import Store
from frontdesk.storage.models import ChannelCheckpoint


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Checkpoints:
    """Load and save a named checkpoint (a small JSON object)."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] = _utcnow) -> None:
        self._store = store
        self._clock = clock

    async def load(self, name: str) -> dict[str, Any] | None:
        async with self._store.reader() as s:
            value = (await s.execute(
                select(ChannelCheckpoint.value).where(ChannelCheckpoint.name == name)
            )).scalar()
        return dict(value) if value is not None else None

    async def save(self, name: str, value: dict[str, Any]) -> None:
        insert = sqlite.insert if self._store.dialect == "sqlite" else postgresql.insert
        now = self._clock()
        stmt = insert(ChannelCheckpoint).values(name=name, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["name"],
                                          set_={"value": value, "updated_at": now})
        async with self._store.writing(), self._store.engine.begin() as conn:
            await conn.execute(stmt)
