"""The Graph API calls frontdesk makes, and Meta's errors in words a person understands.

Sends: Messenger and Instagram ``POST /{version}/{page_id}/messages``, WhatsApp ``POST
/{version}/{phone_number_id}/messages``, each with its token as a Bearer token. Reads: a user's
profile (their name), a WhatsApp media object's URL, then its bytes (with the token).

Errors (``{"error": {"message", "type", "code", "error_subcode", ...}}``) become
:class:`~frontdesk.channels.base.DeliveryError` s: a closed messaging window, a person who
blocked the page or is unavailable, an expired token and a bad request are permanent (retrying
cannot help); a rate limit waits (Retry-After, or a minute); Meta's transient errors and 5xx
are retried with the outbox's backoff.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from frontdesk.channels.base import (
    Deferred,
    DeliveryError,
    PermanentFailure,
    TemporaryFailure,
)

log = logging.getLogger(__name__)

WINDOW_CLOSED = "window"
RATE_CODES = {4, 17, 32, 613, 80006, 130429, 131048, 131056}
WINDOW_CODES = {131047}
WINDOW_SUBCODES = {2018278, 2018108, 2534022}
TOKEN_CODES = {190, 102}
UNAVAILABLE_SUBCODES = {1545041, 2018109, 2534014}


class WindowClosed(PermanentFailure):
    """The platform refused a free-form message: the customer wrote more than 24 hours ago."""


class Graph:
    def __init__(self, base_url: str, version: str, *, timeout: float) -> None:
        self._base = f"{base_url.rstrip('/')}/{version}"
        self._root = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def close(self) -> None:
        # Forgotten before it is closed: a call that starts meanwhile is deferred, not handed a
        # closing session (aiohttp: "Session is closed", an internal error in the outbox).
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # stopping (or not started): the work waits, quietly
            raise Deferred("the meta channel is not running", retry_after=5.0)
        return self._session

    async def post(self, path: str, body: Mapping[str, Any], token: str) -> dict[str, Any]:
        return await self._call("POST", f"{self._base}/{path}", token, json=body)

    async def get(self, path: str, token: str, **params: str) -> dict[str, Any]:
        return await self._call("GET", f"{self._base}/{path}", token, params=params)

    async def download(self, url: str, token: str | None, *, max_bytes: int) -> tuple[bytes, str]:
        """The bytes at ``url`` (a WhatsApp media URL needs the token) and their type."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._http().get(url, headers=headers, allow_redirects=True) as r:
                if r.status >= 400:
                    raise (TemporaryFailure if r.status >= 500 or r.status == 429
                           else PermanentFailure)(f"the file answered HTTP {r.status}")
                data = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > max_bytes:
                        raise PermanentFailure(f"the file is larger than {max_bytes} bytes")
                return bytes(data), r.headers.get("Content-Type", "").split(";")[0]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"could not fetch the file: {type(exc).__name__}") from None

    async def _call(self, method: str, url: str, token: str, **kw: Any) -> dict[str, Any]:
        try:
            async with self._http().request(
                    method, url, headers={"Authorization": f"Bearer {token}"}, **kw) as r:
                text = await r.text()
                try:
                    data = json.loads(text) if text else {}
                except ValueError:
                    data = {}
                if r.status < 400 and isinstance(data, dict) and "error" not in data:
                    return data
                raise failure(r.status, data if isinstance(data, dict) else {},
                              r.headers.get("Retry-After"))
        except DeliveryError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TemporaryFailure(f"could not reach Meta's Graph API: {type(exc).__name__}"
                                   ) from None


def failure(status: int, data: Mapping[str, Any], retry_after: str | None) -> DeliveryError:
    """A Graph API error as a :class:`DeliveryError` with a reason for people."""
    found = data.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    code = _int(error.get("code"))
    subcode = _int(error.get("error_subcode"))
    said = str(error.get("message") or f"HTTP {status}")
    details = (error.get("error_data") or {}).get("details") if isinstance(
        error.get("error_data"), dict) else None
    if code in WINDOW_CODES or subcode in WINDOW_SUBCODES:
        return WindowClosed("the customer's 24-hour messaging window is closed: they last wrote "
                            "more than 24 hours ago, and Meta allows only approved templates "
                            f"after that (Meta: {details or said})")
    if code == 551 or subcode in UNAVAILABLE_SUBCODES:
        return PermanentFailure("this person isn't available: they blocked the page, deleted "
                                f"their account or turned messages off (Meta: {said})")
    if code in TOKEN_CODES:
        return PermanentFailure("Meta refused the access token (expired or revoked): make a new "
                                f"one and set it in [meta] (Meta: {said})")
    if code in RATE_CODES or status == 429:
        try:
            wait = float(retry_after) if retry_after else 60.0
        except ValueError:
            wait = 60.0
        return Deferred(f"Meta's rate limit: waiting {wait:.0f} s (Meta: {said})",
                        retry_after=wait)
    if status >= 500 or error.get("is_transient") or code in (1, 2):
        return TemporaryFailure(f"Meta had a temporary problem (Meta: {said})")
    if code == 10 or code == 200:
        return PermanentFailure(f"the app lacks a permission for this (Meta: {said})")
    return PermanentFailure(f"Meta refused the message (code {code}: {said})")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
