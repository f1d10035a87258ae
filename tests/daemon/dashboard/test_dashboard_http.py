"""The dashboard over plain HTTP (aiohttp as the client): no figures without a session, the
cookie's flags, its value not being the token, revocation, bad queries, escaping, the headers,
and the day/week series against the store's seeded conversations in New York's calendar."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import aiohttp
import pytest

from frontdesk.domain.dashboard import dashboard_figures
from frontdesk.domain.report import Filters, build_report
from tests.daemon.dashboard.conftest import NOW, base_of, make_token, revoke
from tests.support.seed_figures import Seed, seed

COOKIE = "frontdesk_dashboard"


def client() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's jar skips IP hosts by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(http: aiohttp.ClientSession, base: str, token: str,
                  next_query: str = "") -> aiohttp.ClientResponse:
    async with http.post(f"{base}/dashboard/sign-in", data={"token": token, "next": next_query},
                         allow_redirects=False) as r:
        await r.read()
        return r


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with http.get(url, allow_redirects=False) as r:
        return r.status, await r.text(), r.headers


async def test_no_session_no_figures(seeded: Any) -> None:
    base = base_of(seeded)
    async with client() as http:
        status, body, headers = await get(http, f"{base}/dashboard?since=7d")
        assert status == 401
        assert 'data-form="sign-in"' in body and "data-figure" not in body
        assert "data-chart" not in body
        assert headers["Cache-Control"] == "no-store"
        # a made-up cookie is no session either, and is told to go
        http.cookie_jar.update_cookies({COOKIE: "v1.0123456789ab.9999999999.AAAAAAAAAAAAAAAA."
                                                + "A" * 43})
        status, body, headers = await get(http, f"{base}/dashboard")
        assert status == 401 and "data-figure" not in body
        assert "session has ended" in body
        for bad in ("", "fdt_nope", "fdt_0123456789ab_" + "x" * 43):
            r = await sign_in(http, base, bad)
            assert r.status == 401 and COOKIE not in r.cookies


async def test_sign_in_sets_a_session_cookie_that_is_not_the_token(seeded: Any) -> None:
    base = base_of(seeded)
    token = await make_token(seeded.store, "lead")
    async with client() as http:
        r = await sign_in(http, base, token, next_query="since=7d&channel=email&evil=1")
        assert r.status == 303
        assert r.headers["Location"] == "/dashboard?since=7d&channel=email"
        [raw] = r.headers.getall("Set-Cookie")
        assert re.search(r"(?i);\s*HttpOnly", raw) and re.search(r"(?i)SameSite=Strict", raw)
        assert re.search(r"(?i)Path=/dashboard", raw)
        assert "secure" not in raw.lower()  # http.public_url is not https here
        value = r.cookies[COOKIE].value
        secret = token.split("_", 2)[2]
        assert token not in value and secret not in value
        status, body, _ = await get(http, f"{base}/dashboard")
        assert status == 200 and 'data-figure="conversations"' in body
        # signing out ends it; the old cookie value no longer works in this process
        async with http.post(f"{base}/dashboard/sign-out", allow_redirects=False) as out:
            assert out.status == 303
        http.cookie_jar.update_cookies({COOKIE: value})
        status, body, _ = await get(http, f"{base}/dashboard")
        assert status == 401 and "data-figure" not in body


async def test_the_cookie_is_secure_behind_https(dashboard_settings: Any,
                                                 daemon_factory: Any, clock: Any) -> None:
    d = await daemon_factory(dashboard_settings(
        http={"public_url": "https://support.example.com"}), clock=clock)
    token = await make_token(d.store, "lead")
    async with client() as http:
        r = await sign_in(http, base_of(d), token)
        assert r.status == 303
        [raw] = r.headers.getall("Set-Cookie")
        assert re.search(r"(?i);\s*Secure", raw) and re.search(r"(?i);\s*HttpOnly", raw)


async def test_a_revoked_token_ends_its_sessions_and_cannot_sign_in(seeded: Any) -> None:
    base = base_of(seeded)
    token = await make_token(seeded.store, "lead", scope="write")
    async with client() as http:
        assert (await sign_in(http, base, token)).status == 303
        assert (await get(http, f"{base}/dashboard"))[0] == 200
        await revoke(seeded.store, "lead")
        status, body, _ = await get(http, f"{base}/dashboard")
        assert status == 401 and "data-figure" not in body
        r = await sign_in(http, base, token)
        assert r.status == 401 and COOKIE not in r.cookies


async def test_a_cookie_signed_with_another_key_or_extended_is_refused(
        dashboard_settings: Any, daemon_factory: Any, clock: Any) -> None:
    """With ``session_secret`` set, a session survives a restart (and works on another
    instance); a changed expiry or another secret breaks the signature."""
    settings = dashboard_settings(dashboard={"session_secret": "s" * 40})
    d = await daemon_factory(settings, clock=clock)
    token = await make_token(d.store, "lead")
    async with client() as http:
        value = (await sign_in(http, base_of(d), token)).cookies[COOKIE].value
    d.request_stop()
    await d.stop()
    again = await daemon_factory(settings, clock=clock)
    other = await daemon_factory(dashboard_settings(dashboard={"session_secret": "t" * 40}),
                                 clock=clock)
    v, token_id, expires, nonce, mac = value.split(".")
    longer = ".".join([v, token_id, str(int(expires) + 86400), nonce, mac])
    for daemon, cookie, status in ((again, value, 200), (other, value, 401),
                                   (again, longer, 401)):
        async with client() as http:
            http.cookie_jar.update_cookies({COOKIE: cookie})
            assert (await get(http, f"{base_of(daemon)}/dashboard"))[0] == status


async def test_headers_and_bad_queries(seeded: Any) -> None:
    base = base_of(seeded)
    token = await make_token(seeded.store, "lead")
    async with client() as http:
        await sign_in(http, base, token)
        status, body, headers = await get(http, f"{base}/dashboard")
        assert status == 200
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "<script" not in body.lower()
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        for query, words in (("since=forever", "since"), ("since=0s", "since"),
                             ("since=9999d", "since"), ("tag=%3Cb%3E", "tag"),
                             ("channel=" + "x" * 80, "channel")):
            status, body, _ = await get(http, f"{base}/dashboard?{query}")
            assert status == 400 and words in body and "data-figure" not in body
            assert "<b>" not in body


async def test_customer_words_are_escaped(seeded: Any) -> None:
    hostile_tag = '<img src=x onerror="alert(1)">'
    hostile_channel = "<b>x</b>"
    await seed(seeded.store, [Seed(NOW - timedelta(hours=3), hostile_channel, [hostile_tag])])
    token = await make_token(seeded.store, "lead")
    async with client() as http:
        await sign_in(http, base_of(seeded), token)
        status, body, _ = await get(http, f"{base_of(seeded)}/dashboard")
    assert status == 200
    assert hostile_tag not in body and hostile_channel not in body
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in body
    assert "&lt;b&gt;x&lt;/b&gt;" in body


async def test_series_in_the_sla_time_zone(seeded_each_store: Any) -> None:
    """Days and weeks are New York's; each week's figures are its conversations' figures;
    the backlog is every conversation not resolved now."""
    seeded = seeded_each_store
    calendar = seeded.sla.calendar
    async with seeded.store.reader() as s:
        data = await dashboard_figures(s, since=timedelta(days=30), now=NOW, calendar=calendar)
        report = await build_report(s, since=timedelta(days=30), now=NOW, calendar=calendar)
    assert data["report"] == report
    days = {d["day"]: d for d in data["days"]}
    assert days["2026-11-19"]["channels"]["telegram"] == 1  # 03:00 UTC on the 20th
    assert days["2026-11-20"]["total"] == 0
    assert days["2026-11-23"]["channels"]["email"] == 2
    assert sum(d["total"] for d in data["days"]) == report["overall"]["conversations"] == 8
    assert data["days"][0]["day"] == "2026-10-24"
    weeks = {w["week"]: w for w in data["weeks"]}
    assert data["weeks"][0]["week"] == "2026-10-19" and data["weeks"][-1]["week"] == "2026-11-23"
    first = weeks["2026-11-02"]
    assert first["conversations"] == 2
    assert first["first_response_seconds_median"] == (1800 + 7200) / 2
    assert (first["sla_met"], first["sla_breached"], first["sla_met_share"]) == (1, 1, 0.5)
    assert (first["ratings"], first["csat_average"]) == (2, 3.5)
    assert weeks["2026-11-16"]["conversations"] == 2  # the 18th, and the 19th in New York
    tags = {t["tag"]: t for t in data["tags"]}
    assert [t["tag"] for t in data["tags"]] == ["refund", "login", "shipping"]
    assert tags["refund"]["conversations"] == 4
    assert tags["refund"]["weeks"]["2026-11-02"] == 2 and tags["refund"]["weeks"]["2026-11-23"] == 1
    backlog = {b["bucket"]: b for b in data["backlog"]}
    assert backlog["<1h"]["open"] == 1 and backlog["1–4h"]["open"] == 1
    assert backlog["3–7d"]["pending"] == 1 and backlog[">7d"]["total"] == 3
    assert backlog["4–24h"]["total"] == backlog["1–3d"]["total"] == 0

    async with seeded.store.reader() as s:
        narrowed = await dashboard_figures(s, since=timedelta(days=30), now=NOW,
                                           calendar=calendar,
                                           filters=Filters(channel="email", tag="refund"))
    assert narrowed["report"]["overall"]["conversations"] == 3
    assert narrowed["channels"] == ["email"]
    assert {b["bucket"]: b["total"] for b in narrowed["backlog"]}[">7d"] == 1


@pytest.mark.parametrize("query", ["", "?since=7d", "?channel=email", "?tag=refund",
                                   "?since=90d&channel=sms&tag=" + quote("shipping")])
async def test_the_summary_is_the_reports(seeded_each_store: Any, query: str) -> None:
    """Every summary number is ``build_report``'s for the same period and filters."""
    seeded = seeded_each_store
    token = await make_token(seeded.store, "lead")
    async with client() as http:
        await sign_in(http, base_of(seeded), token)
        status, body, _ = await get(http, f"{base_of(seeded)}/dashboard{query}")
    assert status == 200
    q = {k: v[0] for k, v in parse_qs(query.lstrip("?")).items()}
    since = {"7d": 7, "30d": 30, "90d": 90}[q.get("since", "30d")]
    async with seeded.store.reader() as s:
        report = await build_report(s, since=timedelta(days=since), now=NOW,
                                    calendar=seeded.sla.calendar,
                                    filters=Filters(channel=q.get("channel"), tag=q.get("tag")))
    shown = {m.group(1): json.loads(m.group(2).replace("&quot;", '"'))
             for m in re.finditer(r'data-figure="([a-z_0-9]+)" data-value="([^"]*)"', body)}
    assert len(shown) >= 10
    for key, value in shown.items():
        assert value == report["overall"][key], key
