"""The REST API on the daemon's HTTP server: ``/api/v1`` and ``/api/openapi.json``.

Every ``/api/v1`` request goes through the same steps, in :meth:`ApiServer._run`: the token
(401), its scope (403 for a read token that would change something), its rate limit (429 with
Retry-After), the query and body against the operation's models (400 not JSON, 413 too large,
422 not fitting), then the operation in one transaction. A POST with an ``Idempotency-Key`` keeps
the key and its first answer in that same transaction: a repeat (same token, same key) gets the
first status and JSON without doing anything, the same key with another body is 422. Errors are
``{"error": "words"}``; the store being unreachable is 503, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from frontdesk import __version__
from frontdesk.config.schema import ApiConfig, parse_rate
from frontdesk.daemon.api.calls import Answer, ApiError, Call
from frontdesk.daemon.api.spec import Operation, openapi
from frontdesk.daemon.api.tokens import Caller, caller_of
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store, store_unavailable
from frontdesk.storage.models import ApiIdempotency, ApiToken

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
OPENAPI_PATH = "/api/openapi.json"
_LAST_USED_EVERY = 60.0  # seconds between writes of a token's last_used_at


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(status=status, headers=headers, content_type="application/json",
                        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")))


def error(status: int, text: str, headers: dict[str, str] | None = None,
          **extra: Any) -> web.Response:
    return _json(status, {"error": text, **extra}, headers)


class RateWindow:
    """At most ``limit`` requests per token in any ``window`` (in this instance)."""

    def __init__(self, rate: str) -> None:
        self.limit, span = parse_rate(rate)
        self.window = span.total_seconds()
        self._seen: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> int:
        """0 when the request may go now (and it is counted), else seconds to wait."""
        now = time.monotonic()
        seen = self._seen.setdefault(key, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return max(1, math.ceil(seen[0] + self.window - now))
        seen.append(now)
        return 0


def _validation_words(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
               for e in exc.errors(include_url=False, include_input=False)]
    first = details[0] if details else {"field": "(body)", "problem": "invalid"}
    return f"{first['field']}: {first['problem']}", details


class ApiServer:
    def __init__(self, config: ApiConfig, store: Store, *, clock: Clock,
                 operations: Sequence[Operation]) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._operations = list(operations)
        self._rates = RateWindow(config.rate_limit)
        self._last_used: dict[str, float] = {}
        self._document = json.dumps(openapi(self._operations, version=__version__))
        self._sweeper: asyncio.Task[None] | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Under ``/api/``, aiohttp's own answers (no such route 404, wrong method 405) are
        JSON errors too."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            return error(405, f"{request.method} is not allowed here; allowed: "
                              f"{', '.join(sorted(exc.allowed_methods))}",
                         {"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPNotFound:
            return error(404, f"no such route: {request.path} (GET {OPENAPI_PATH} lists them)")

    def routes(self) -> list[web.RouteDef]:
        out = [web.get(OPENAPI_PATH, self._openapi)]
        for op in self._operations:
            out.append(web.route(op.method, op.path, self._handler(op)))
        return out

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._document, content_type="application/json")

    def _handler(self, op: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                return await self._run(op, request)
            except ApiError as exc:
                return error(exc.status, exc.error, exc.headers, **exc.extra)
            except Exception as exc:
                if store_unavailable(exc):
                    log.warning("api: the store is unavailable (%s)", type(exc).__name__)
                    return error(503, "the store cannot be reached just now; try again",
                                 {"Retry-After": "5"})
                raise
        return handle

    async def _run(self, op: Operation, request: web.Request) -> web.Response:
        params = dict(request.match_info)
        if not op.writes:  # one read session for the token and the operation
            async with self._store.reader() as s:
                caller = await self._caller(op, request, s)
                query = self._query(op, request)
                answer = await op.handler(Call(caller, s, self._clock(), params, query))
            await self._touch(caller)
            return _json(answer.status, answer.body)
        async with self._store.reader() as s:
            caller = await self._caller(op, request, s)
        query = self._query(op, request)
        raw, body = await self._body(op, request)
        key = request.headers.get("Idempotency-Key") if op.idempotent else None
        if key is not None and not 0 < len(key) <= 255:
            raise ApiError(422, "Idempotency-Key must be 1 to 255 characters")
        fingerprint = hashlib.sha256(
            f"{op.method} {request.path}\n".encode() + raw).hexdigest() if key else ""
        answer = await self._transaction(op, caller, params, query, body, key, fingerprint)
        await self._touch(caller)
        return _json(answer.status, answer.body)

    async def _caller(self, op: Operation, request: web.Request, s: AsyncSession) -> Caller:
        """The token's caller, allowed to do ``op`` now: else 401, 403 or 429."""
        caller = await caller_of(s, request.headers.get("Authorization"))
        if caller is None:
            raise ApiError(401, "a valid token is needed: Authorization: Bearer TOKEN "
                                "(frontdesk token create)", headers={"WWW-Authenticate": "Bearer"})
        if op.writes and not caller.may_write:
            raise ApiError(403, f"token {caller.name!r} may only read (scope read)")
        wait = self._rates.retry_after(caller.token_id)
        if wait:
            raise ApiError(429, f"token {caller.name!r} is past its rate limit "
                                f"({self._config.rate_limit}); try again in {wait}s",
                           headers={"Retry-After": str(wait)})
        return caller

    def _query(self, op: Operation, request: web.Request) -> Any:
        if op.query is None:
            return None
        values: dict[str, str] = {}
        for name in request.query:
            if name in values:
                raise ApiError(422, f"{name}: given more than once")
            values[name] = request.query[name]
        try:
            return op.query.model_validate(values)
        except ValidationError as exc:
            words, details = _validation_words(exc)
            raise ApiError(422, words, details=details) from None

    async def _body(self, op: Operation, request: web.Request) -> tuple[bytes, Any]:
        if op.body is None:
            return b"", None
        limit = self._config.max_body
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        try:
            raw = await request.content.read(limit + 1)
        except ValueError:
            raise ApiError(400, "the body could not be read") from None
        if len(raw) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(422, "the body must be a JSON object")
        model: type[BaseModel] = op.body
        try:
            return raw, model.model_validate(data)
        except ValidationError as exc:
            words, details = _validation_words(exc)
            raise ApiError(422, words, details=details) from None

    async def _transaction(self, op: Operation, caller: Caller, params: dict[str, str],
                           query: Any, body: Any, key: str | None,
                           fingerprint: str) -> Answer:
        if op.own_transactions:
            return await self._on_its_own(op, caller, params, query, body, key, fingerprint)
        for attempt in range(2):
            try:
                async with self._store.session() as s:
                    earlier = await self._earlier(s, caller, key, fingerprint)
                    if earlier is not None:
                        return earlier
                    call = Call(caller, s, self._clock(), params, query, body)
                    answer = await op.handler(call)
                    if key is not None and answer.status < 500 and answer.final:
                        s.add(_kept(caller, key, fingerprint, answer, call.now))
            except IntegrityError:
                if key is None or attempt:
                    raise
                continue  # the same key committed a moment ago: answer as it did
            await _after_commit(call)
            return answer
        raise AssertionError("unreachable")

    async def _on_its_own(self, op: Operation, caller: Caller, params: dict[str, str],
                          query: Any, body: Any, key: str | None, fingerprint: str) -> Answer:
        async with self._store.reader() as s:
            earlier = await self._earlier(s, caller, key, fingerprint)
            if earlier is not None:
                return earlier
            call = Call(caller, s, self._clock(), params, query, body)
            answer = await op.handler(call)
        if key is not None and answer.status < 300 and answer.final:
            try:
                async with self._store.session() as w:
                    w.add(_kept(caller, key, fingerprint, answer, call.now))
            except IntegrityError:  # the same key answered a moment ago: that answer stands
                async with self._store.reader() as s:
                    earlier = await self._earlier(s, caller, key, fingerprint)
                if earlier is not None:
                    return earlier
        await _after_commit(call)
        return answer

    async def _earlier(self, s: AsyncSession, caller: Caller, key: str | None,
                       fingerprint: str) -> Answer | None:
        """The kept first answer to this token's ``key``, if there is one."""
        if key is None:
            return None
        earlier = await s.get(ApiIdempotency, (caller.token_id, key))
        return None if earlier is None else self._replay(earlier, fingerprint)

    def _replay(self, earlier: ApiIdempotency, fingerprint: str) -> Answer:
        if earlier.request_hash != fingerprint:
            raise ApiError(422, "this Idempotency-Key was used with another request; use a new "
                                "key for a new request")
        return Answer(earlier.status, (earlier.body or {}).get("json"))

    async def _touch(self, caller: Caller) -> None:
        """``last_used_at``, written at most once a minute per token."""
        now = time.monotonic()
        if now - self._last_used.get(caller.token_id, -math.inf) < _LAST_USED_EVERY:
            return
        self._last_used[caller.token_id] = now
        try:
            async with self._store.session() as s:
                await s.execute(update(ApiToken).where(ApiToken.id == caller.token_id)
                                .values(last_used_at=self._clock()))
        except Exception as exc:  # noqa: BLE001 - a figure for `token list`, never an error
            log.debug("api: last_used_at not written: %s", exc)

    async def forget_old_keys(self) -> int:
        """Idempotency keys older than ``api.idempotency_window`` are deleted; how many."""
        async with self._store.session() as s:
            result = await s.execute(delete(ApiIdempotency).where(
                ApiIdempotency.created_at < self._clock() - self._config.idempotency_window))
        return int(getattr(result, "rowcount", 0) or 0)

    # -- as a daemon service: the kept answers are forgotten after their window ----------------

    name = "api"
    in_readiness = False  # nothing outside to wait for
    forget_every = 3600.0
    """Seconds between sweeps of old Idempotency-Keys."""

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="api-idempotency-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    @property
    def ready(self) -> bool:
        return True

    async def _sweep(self) -> None:
        while True:
            try:
                forgotten = await self.forget_old_keys()
                if forgotten:
                    log.info("api: forgot %d Idempotency-Key answer(s) past their window",
                             forgotten)
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("api: could not forget old Idempotency-Keys: %s", exc)
            await asyncio.sleep(self.forget_every)


def _kept(caller: Caller, key: str, fingerprint: str, answer: Answer,
          now: datetime) -> ApiIdempotency:
    """The record of a first answer to an Idempotency-Key."""
    return ApiIdempotency(token_id=caller.token_id, key=key, request_hash=fingerprint,
                          status=answer.status, conversation_id=answer.conversation_id,
                          body={"json": answer.body}, created_at=now)


async def _after_commit(call: Call) -> None:
    for step in call.after_commit:
        result = step()
        if result is not None:
            await result


def encode_cursor(created_at: datetime, row_id: int) -> str:
    text = f"{created_at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at, _, row = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        created = datetime.fromisoformat(at)
        if created.tzinfo is None:
            raise ValueError("naive")
        return created, int(row)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "cursor: not a cursor this API gave (pass next_cursor as it "
                            "came)") from None
