"""Outbox rows a sweep batch writes at its end, in one statement and each at most once.

These are the scheduler's work that is not about one customer message (a notice to a person on
call, a post in a managers' channel). Each carries an idempotency key; a key already in the
outbox (the same escalation level fired before a crash, or by another instance) is left as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import Outbox, core_table


class OutboxRows:
    """The rows of one batch (one transaction), written by :meth:`write`."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        self._rows: list[dict[str, object]] = []

    def add(self, *, kind: str, payload: Mapping[str, object], key: str, now: datetime) -> None:
        """A pending row of ``kind`` with no conversation order, due at once."""
        self._rows.append({"kind": kind, "conversation_id": None, "message_id": None,
                           "payload": dict(payload), "idempotency_key": key,
                           "state": "pending", "attempts": 0, "next_attempt_at": now,
                           "last_error": None, "created_at": now, "done_at": None})

    async def write(self, s: AsyncSession) -> None:
        """Insert the rows whose key is not in the outbox yet."""
        if not self._rows:
            return
        insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        await s.execute(insert(core_table(Outbox))
                        .on_conflict_do_nothing(index_elements=["idempotency_key"]), self._rows)
        self._rows = []
