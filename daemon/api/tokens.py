"""API tokens: made by ``frontdesk token create``, printed once, kept only as a hash.

A token reads ``fdt_<id>_<secret>``: the id (12 hex digits) finds the row, the SHA-256 of the
secret (256 random bits) is compared with the stored one in constant time. Nothing that is stored
lets anyone make a request. A revoked token's row stays (its name is not reused silently) and
answers 401 from that moment, on every instance: each request reads the row.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.domain.conversations import iso
from frontdesk.storage.models import ApiToken, Event

SCOPES = ("read", "write")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_TOKEN = re.compile(r"^fdt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class TokenError(ValueError):
    """A token command cannot be done (a bad or taken name, an unknown token)."""


@dataclass(frozen=True)
class Caller:
    """Who makes an API request: the token's id, name and scope."""

    token_id: str
    name: str
    scope: str

    @property
    def may_write(self) -> bool:
        return self.scope == "write"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TokenError(f"{name!r} is not a token name: letters, digits, '.', '_', '-' and "
                         "'@', at most 64, starting with a letter or digit")
    return name


async def create_token(session: AsyncSession, name: str, scope: str, *, actor: str,
                       now: datetime) -> str:
    """A new token named ``name``; returns the token itself (the only time it exists)."""
    check_name(name)
    if scope not in SCOPES:
        raise TokenError(f"{scope!r} is not a scope: read or write")
    taken = await session.scalar(select(ApiToken.id).where(ApiToken.name == name))
    if taken is not None:
        raise TokenError(f"a token named {name!r} exists (revoked ones keep their names)")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    session.add(ApiToken(id=token_id, name=name, scope=scope, secret_hash=_hash(secret),
                         created_at=now, created_by=actor[:256]))
    session.add(Event(kind="api_token_created", actor=actor, created_at=now,
                      data={"token": name, "scope": scope}))
    try:
        await session.flush()
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists") from None
    return f"fdt_{token_id}_{secret}"


async def list_tokens(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.execute(select(ApiToken).where(ApiToken.revoked_at.is_(None))
                                  .order_by(ApiToken.created_at, ApiToken.name))).scalars()
    return [{"name": t.name, "scope": t.scope, "created_at": iso(t.created_at),
             "last_used_at": iso(t.last_used_at)} for t in rows]


async def revoke_token(session: AsyncSession, name: str, *, actor: str, now: datetime) -> None:
    token = await session.scalar(select(ApiToken).where(ApiToken.name == name,
                                                        ApiToken.revoked_at.is_(None)))
    if token is None:
        raise TokenError(f"no token named {name!r} (`frontdesk token list` shows them)")
    token.revoked_at = now
    session.add(Event(kind="api_token_revoked", actor=actor, created_at=now,
                      data={"token": name}))


async def caller_of(session: AsyncSession, header: str | None) -> Caller | None:
    """The caller an ``Authorization: Bearer ...`` header names, or None (no header, not a
    token, unknown, wrong secret or revoked)."""
    if not header or header[:7].lower() != "bearer ":
        return None
    m = _TOKEN.match(header[7:].strip())
    if not m:
        return None
    token = await session.get(ApiToken, m.group(1))
    if token is None or token.revoked_at is not None:
        return None
    if not hmac.compare_digest(token.secret_hash.encode(), _hash(m.group(2)).encode()):
        return None
    return Caller(token.id, token.name, token.scope)
