"""One API request as an operation sees it (:class:`Call`), its answer, and its errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.daemon.api.tokens import Caller


class ApiError(Exception):
    """An answer other than success: status and words (and more JSON fields)."""

    def __init__(self, status: int, error: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(error)
        self.status, self.error, self.extra = status, error, extra
        self.headers = headers


@dataclass
class Call:
    """One request as an operation sees it."""

    caller: Caller
    session: AsyncSession
    now: datetime
    params: dict[str, str]
    query: Any = None
    body: Any = None
    after_commit: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    """What to do once the transaction committed (kick the outbox, delete files)."""

    @property
    def audit(self) -> dict[str, str]:
        """What every change made through the API writes to the audit beside its actor."""
        return {"via": "api", "token": self.caller.name}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any = None  # JSON-able, or None for no body
    conversation_id: int | None = None
    """The conversation the answer is about: an erasure deletes a kept answer with it."""
    final: bool = True
    """False for an answer that says "not yet" (202 while the daemon works): not kept for a
    repeat of its Idempotency-Key, which gets the real answer once there is one."""
