"""The dashboard's routes on the daemon's HTTP server (``[dashboard] enabled``, on by default).

* ``GET /dashboard``: with a valid session, the page of figures for ``?since=30d&channel=&tag=``
  (the last 30 days by default); without one, 401 and the sign-in form, with no figures.
* ``POST /dashboard/sign-in``: a form with ``token`` (an API token from ``frontdesk token
  create``, any scope, checked like the REST API checks it) sets the session cookie and answers
  303 to the page; a bad, unknown or revoked token is 401 and the form again.
* ``POST /dashboard/sign-out``: ends the session (the cookie is deleted) and answers 303.

The session cookie (:mod:`.sessions`) is ``HttpOnly``, ``SameSite=Strict``, limited to
``/dashboard`` and ``Secure`` when ``http.public_url`` is https; it carries no token. Every answer
is ``Cache-Control: no-store`` with a Content Security Policy that allows no script at all and
only the page's own stylesheet. Sign-ins are in the audit (``events``, kind
``dashboard_signed_in``).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from frontdesk.config.schema import DashboardConfig, parse_duration
from frontdesk.daemon.api.tokens import caller_of
from frontdesk.daemon.dashboard.page import View, dashboard_page, message_page, sign_in_page
from frontdesk.daemon.dashboard.sessions import COOKIE, Sessions, SignedIn
from frontdesk.domain.business_hours import BusinessCalendar
from frontdesk.domain.dashboard import dashboard_figures
from frontdesk.domain.report import Filters
from frontdesk.storage.clock import Clock
from frontdesk.storage.db import Store, store_unavailable
from frontdesk.storage.models import ApiToken, Event

log = logging.getLogger(__name__)

PATH = "/dashboard"
DEFAULT_SINCE = "30d"
LONGEST = timedelta(days=731)
_KEYS = ("since", "channel", "tag")
_WORD = re.compile(r"^[a-z0-9_:-]{1,50}$")
"""What a channel or tag filter may be (channel names and tags are lower-case words)."""


class BadQuery(ValueError):
    """A query parameter that cannot be shown; the message names it."""


def read_view(values: Mapping[str, str]) -> tuple[View, timedelta]:
    """The view a query string asks for, and its period; :class:`BadQuery` when it cannot be."""
    since_text = (values.get("since") or DEFAULT_SINCE).strip()
    try:
        since = parse_duration(since_text)
    except ValueError:
        raise BadQuery(f'since: {since_text[:40]!r} is not a period like "30d" or "12h"') from None
    if not timedelta(hours=1) <= since <= LONGEST:
        raise BadQuery("since: the period is from 1h to 731d")
    channel = (values.get("channel") or "").strip() or None
    tag = (values.get("tag") or "").strip().lower() or None
    for key, value in (("channel", channel), ("tag", tag)):
        if value is not None and not _WORD.match(value):
            raise BadQuery(f"{key}: {value[:60]!r} is not a {key} name")
    return View(since_text, channel, tag), since


def _next_query(raw: str) -> str:
    """The filters to come back to after signing in: only the page's own keys, re-encoded."""
    pairs = [(k, v) for k, v in parse_qsl(raw[:500]) if k in _KEYS]
    return urlencode(pairs)


class DashboardServer:
    """The routes; see the module docstring."""

    def __init__(self, config: DashboardConfig, *, store: Store, clock: Clock,
                 calendar: BusinessCalendar, public_url: str = "") -> None:
        self._store = store
        self._clock = clock
        self._calendar = calendar
        self._secure = public_url.lower().startswith("https://")
        self.sessions = Sessions(config.session_secret.get_secret_value(),
                                 config.session_lifetime)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self._guarded(self.page)),
                web.post(f"{PATH}/sign-in", self._guarded(self.sign_in)),
                web.post(f"{PATH}/sign-out", self._guarded(self.sign_out))]

    # -- answers -----------------------------------------------------------------------------

    @staticmethod
    def _html(status: int, render: Callable[[str], str]) -> web.Response:
        nonce = secrets.token_urlsafe(16)
        response = web.Response(status=status, text=render(nonce), content_type="text/html",
                                charset="utf-8")
        response.headers.update({
            "Cache-Control": "no-store",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        })
        return response

    def _sign_in_form(self, status: int, *, error: str | None = None,
                      next_query: str = "") -> web.Response:
        return self._html(status, lambda n: sign_in_page(nonce=n, error=error,
                                                         next_query=next_query))

    def _guarded(self, handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except Exception as exc:
                if store_unavailable(exc):
                    log.warning("dashboard: the store is unavailable (%s)", type(exc).__name__)
                    response = self._html(503, lambda n: message_page(
                        nonce=n, title="Not available just now",
                        text="The store cannot be reached; try again in a moment."))
                    response.headers["Retry-After"] = "5"
                    return response
                raise
        return guarded

    async def _signed_in(self, request: web.Request) -> SignedIn | None:
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        async with self._store.reader() as s:
            return await self.sessions.check(s, value)

    # -- routes ------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        who = await self._signed_in(request)
        if who is None:
            ended = bool(request.cookies.get(COOKIE))
            response = self._sign_in_form(
                401, error="Your session has ended; sign in again." if ended else None,
                next_query=_next_query(request.query_string))
            if ended:
                response.del_cookie(COOKIE, path=PATH)
            return response
        try:
            view, since = read_view(request.query)
        except BadQuery as exc:
            problem = str(exc)
            return self._html(400, lambda n: message_page(nonce=n, title="Cannot show that",
                                                          text=problem))
        async with self._store.reader() as s:
            data = await dashboard_figures(s, since=since, now=self._clock(),
                                           calendar=self._calendar,
                                           filters=Filters(channel=view.channel, tag=view.tag))
        return self._html(200, lambda n: dashboard_page(nonce=n, data=data, view=view,
                                                        signed_in_as=who.name,
                                                        tz=self._calendar.tz))

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = form.get("token")
        next_query = _next_query(str(form.get("next") or ""))
        text = token.strip() if isinstance(token, str) else ""
        async with self._store.reader() as s:
            caller = await caller_of(s, f"Bearer {text}") if text else None
            row = None if caller is None else await s.get(ApiToken, caller.token_id)
        if caller is None or row is None:
            log.info("dashboard: a sign-in with a token that is not valid (or revoked)")
            return self._sign_in_form(401, error="That token is not valid, or it was revoked.",
                                      next_query=next_query)
        value = self.sessions.issue(row)
        async with self._store.session() as w:
            w.add(Event(kind="dashboard_signed_in", actor=f"dashboard:{caller.name}",
                        created_at=self._clock(), data={"token": caller.name}))
        log.info("dashboard: token %r signed in", caller.name)
        response = _see_other(PATH + (f"?{next_query}" if next_query else ""))
        response.set_cookie(COOKIE, value, path=PATH, httponly=True, samesite="Strict",
                            secure=self._secure,
                            max_age=int(self.sessions.lifetime.total_seconds()))
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        self.sessions.sign_out(request.cookies.get(COOKIE))
        response = _see_other(PATH)
        response.del_cookie(COOKIE, path=PATH)
        return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
