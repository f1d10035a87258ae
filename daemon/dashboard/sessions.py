"""The dashboard's session cookie: a signed value, never the API token itself.

A cookie reads ``v1.<token id>.<expires>.<nonce>.<mac>``: the id of the API token that signed in
(its public part), when the session ends (Unix seconds), a random nonce, and an HMAC-SHA256 over
all of them and the token's stored hash, keyed with ``dashboard.session_secret`` (or a random key
per process when that is empty). Every page view reads the token's row, so a revoked token ends
its sessions at once, on every instance; the token's secret is not in the cookie and cannot be
derived from it; a cookie cannot be forged or extended without the key. Signing out forgets the
nonce in this process until the cookie would have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk.storage.models import ApiToken

COOKIE = "frontdesk_dashboard"
_VALUE = re.compile(r"^v1\.([0-9a-f]{12})\.(\d{1,12})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class SignedIn:
    """Who a valid session cookie belongs to."""

    token_id: str
    name: str
    scope: str
    expires: int
    nonce: str


class Sessions:
    """Issues and checks session cookies (see the module docstring)."""

    def __init__(self, secret: str, lifetime: timedelta, *,
                 wall: Callable[[], float] = time.time) -> None:
        self._key = (hashlib.sha256(b"frontdesk dashboard session\0" + secret.encode()).digest()
                     if secret else secrets.token_bytes(32))
        self.lifetime = lifetime
        self._wall = wall
        self._signed_out: dict[str, int] = {}  # nonce -> when its cookie expires

    def _mac(self, token_id: str, expires: int, nonce: str, secret_hash: str) -> str:
        message = f"v1|{token_id}|{expires}|{nonce}|{secret_hash}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, token: ApiToken) -> str:
        """A new session's cookie value for ``token`` (already checked)."""
        expires = int(self._wall() + self.lifetime.total_seconds())
        nonce = secrets.token_urlsafe(12)
        mac = self._mac(token.id, expires, nonce, token.secret_hash)
        return f"v1.{token.id}.{expires}.{nonce}.{mac}"

    async def check(self, session: AsyncSession, value: str | None) -> SignedIn | None:
        """Who ``value`` signs in, or None: malformed, expired, signed out, its token unknown or
        revoked, or a bad signature."""
        m = _VALUE.match(value or "")
        if m is None:
            return None
        token_id, expires, nonce, mac = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if expires <= self._wall() or nonce in self._signed_out:
            return None
        token = await session.get(ApiToken, token_id)
        if token is None or token.revoked_at is not None:
            return None
        if not hmac.compare_digest(mac, self._mac(token_id, expires, nonce, token.secret_hash)):
            return None
        return SignedIn(token.id, token.name, token.scope, expires, nonce)

    def sign_out(self, value: str | None) -> None:
        """This process stops taking the cookie ``value`` (its browser also drops it)."""
        m = _VALUE.match(value or "")
        now = self._wall()
        self._signed_out = {n: e for n, e in self._signed_out.items() if e > now}
        if m is not None and int(m.group(2)) > now:
            self._signed_out[m.group(3)] = int(m.group(2))
