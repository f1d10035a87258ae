"""The REST API against a running daemon on SQLite and PostgreSQL: tokens, scopes, the
conversation routes, idempotency, the cursor, errors and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from frontdesk.daemon.api.tokens import create_token, revoke_token
from frontdesk.storage.clock import utcnow
from frontdesk.storage.models import ApiToken, Event, Message, Outbox
from tests.support.helpers import conversations, eventually, mail, processed, run_cli, send


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    def __init__(self, http: aiohttp.ClientSession, daemon: Any, token: str) -> None:
        self.http, self.daemon, self.token = http, daemon, token
        self.base = f"http://127.0.0.1:{daemon.http.port}"

    async def call(self, method: str, path: str, *, token: str | None = None,
                   json: Any = None, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        h = dict(headers or {})
        if token != "":  # "": no Authorization header at all
            h["Authorization"] = f"Bearer {token or self.token}"
        async with self.http.request(method, self.base + path, json=json, data=data,
                                     headers=h) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, r.headers


async def _token(d: Any, name: str, scope: str) -> str:
    async with d.store.session() as s:
        return await create_token(s, name, scope, actor="test", now=utcnow())


@pytest.fixture
async def api(make_settings: Callable[..., Any], daemon_factory: Any, database_url: str,
              http: aiohttp.ClientSession) -> Api:
    d = await daemon_factory(make_settings(database_url=database_url,
                                           api={"enabled": True, "rate_limit": "1000/1m"}))
    return Api(http, d, await _token(d, "shop", "write"))


async def _conversation(api: Api, subject: str = "Invoice 1843 is missing",
                        frm: str = "Ada Lovelace <ada@example.org>") -> str:
    before = len(await conversations(api.daemon.store))
    await send(api.daemon.email.smtp.port, mail(frm=frm, subject=subject,
                                                msgid=f"<{uuid.uuid4().hex}@example.org>"))
    await eventually(lambda: _more(api, before))
    return (await conversations(api.daemon.store))[-1].reference


async def _more(api: Api, before: int) -> bool:
    return await processed(api.daemon.store) and \
        len(await conversations(api.daemon.store)) > before


async def test_tokens_and_scopes(api: Api) -> None:
    ref = await _conversation(api)
    status, body, headers = await api.call("GET", f"/api/v1/conversations/{ref}", token="nope")
    assert status == 401 and "token" in body["error"] and headers["WWW-Authenticate"] == "Bearer"
    status, body, _ = await api.call("GET", "/api/v1/conversations", token="")
    assert status == 401
    reader = await _token(api.daemon, "dashboard", "read")
    status, body, _ = await api.call("GET", f"/api/v1/conversations/{ref}", token=reader)
    assert status == 200 and body["reference"] == ref
    assert body["messages"][0]["text"].startswith("Hello")
    status, body, _ = await api.call("POST", f"/api/v1/conversations/{ref}/notes",
                                     token=reader, json={"text": "x", "author": "Grace"})
    assert status == 403 and "read" in body["error"]
    # a right id with a wrong secret is refused too
    forged = reader[:-5] + ("AAAAA" if not reader.endswith("AAAAA") else "BBBBB")
    assert (await api.call("GET", "/api/v1/conversations", token=forged))[0] == 401
    async with api.daemon.store.session() as s:
        await revoke_token(s, "dashboard", actor="test", now=utcnow())
    assert (await api.call("GET", "/api/v1/conversations", token=reader))[0] == 401


async def test_reply_note_and_actions_are_audited_with_the_token(api: Api) -> None:
    ref = await _conversation(api)
    status, message, _ = await api.call(
        "POST", f"/api/v1/conversations/{ref}/replies",
        json={"text": "We have found the invoice.", "author": "Grace Hopper"})
    assert status == 202, message
    assert message["direction"] == "out" and message["delivery_status"] == "queued"
    status, note, _ = await api.call("POST", f"/api/v1/conversations/{ref}/notes",
                                     json={"text": "Called the warehouse", "author": "Grace"})
    assert status == 201 and note["note"] is True
    for action, value in (("assign", "Grace"), ("priority", "high"), ("tag", ["billing"]),
                          ("snooze", "2h")):
        status, summary, _ = await api.call("POST", f"/api/v1/conversations/{ref}/actions",
                                            json={"action": action, "value": value,
                                                  "author": "Grace"})
        assert status == 200, summary
    assert summary["assignee"] == "Grace" and summary["priority"] == "high"
    assert summary["tags"] == ["billing"] and summary["status"] == "snoozed"
    status, summary, _ = await api.call(
        "POST", f"/api/v1/conversations/{ref}/actions",
        json={"action": "resolve", "note": "Invoice re-sent", "author": "Grace"})
    assert status == 200 and summary["status"] == "resolved"
    assert summary["resolution_note"] == "Invoice re-sent"
    async with api.daemon.store.reader() as s:
        events = (await s.execute(select(Event).where(Event.data["via"].as_string() == "api")
                                  )).scalars().all()
    kinds = {e.kind for e in events}
    assert {"staff_reply", "note_added", "conversation_assigned", "priority_changed",
            "tags_changed", "conversation_snoozed", "conversation_resolved"} <= kinds
    assert all(e.data["token"] == "shop" for e in events)
    status, body, _ = await api.call("POST", f"/api/v1/conversations/{ref}/actions",
                                     json={"action": "priority", "value": "extreme",
                                           "author": "Grace"})
    assert status == 422 and "priority" in body["error"]
    for bad in (["Billing"], ["two words"], ["x" * 51], "<b>"):  # CONTRACT.md: a bad tag, 400
        status, body, _ = await api.call("POST", f"/api/v1/conversations/{ref}/actions",
                                         json={"action": "tag", "value": bad, "author": "Grace"})
        assert status == 400 and "is not a tag" in body["error"], body


async def test_an_idempotency_key_makes_a_repeat_a_no_op(api: Api) -> None:
    ref = await _conversation(api)
    path = f"/api/v1/conversations/{ref}/replies"
    body = {"text": "Sent again?", "author": "Grace"}
    key = {"Idempotency-Key": "order-1843-reply"}
    first = await api.call("POST", path, json=body, headers=key)
    again = await asyncio.gather(*(api.call("POST", path, json=body, headers=key)
                                   for _ in range(3)))
    assert first[0] == 202 and all(a[:2] == first[:2] for a in again)
    async with api.daemon.store.reader() as s:
        sent = await s.scalar(select(func.count()).select_from(Message).where(
            Message.text == "Sent again?"))
        rows = await s.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.kind == "deliver"))
    assert sent == 1 and rows == 1
    status, error, _ = await api.call("POST", path, json={**body, "text": "Other"},
                                      headers=key)
    assert status == 422 and "Idempotency-Key" in error["error"]
    # another token's key is its own
    other = await _token(api.daemon, "n8n", "write")
    assert (await api.call("POST", path, json=body, headers=key, token=other))[0] == 202


async def test_the_cursor_never_repeats_or_skips_while_conversations_arrive(api: Api) -> None:
    for n in range(5):
        await _conversation(api, subject=f"Question {n}", frm=f"c{n}@example.org")
    seen: list[str] = []
    status, page, _ = await api.call("GET", "/api/v1/conversations?limit=2")
    assert status == 200 and len(page["items"]) == 2
    seen += [c["reference"] for c in page["items"]]
    await _conversation(api, subject="Arrived meanwhile", frm="late@example.org")
    while page["next_cursor"]:
        status, page, _ = await api.call(
            "GET", f"/api/v1/conversations?limit=2&cursor={page['next_cursor']}")
        assert status == 200
        seen += [c["reference"] for c in page["items"]]
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, key=lambda r: -int(r[3:]))  # newest first
    status, page, _ = await api.call("GET", "/api/v1/conversations?status=resolved")
    assert status == 200 and page == {"items": [], "next_cursor": None}
    status, page, _ = await api.call("GET", "/api/v1/conversations?contact=c3@example.org")
    assert [c["subject"] for c in page["items"]] == ["Question 3"]
    status, page, _ = await api.call("GET", "/api/v1/conversations?q=Hello&limit=200")
    assert status == 200 and len(page["items"]) == 6
    for bad in ("limit=0", "limit=201", "cursor=xyz", "status=gone", "limit=a&limit=b"):
        status, body, _ = await api.call("GET", f"/api/v1/conversations?{bad}")
        assert status == 422 and body["error"], bad


async def test_errors_are_words_never_tracebacks(api: Api) -> None:
    ref = await _conversation(api)
    cases = [
        ("GET", "/api/v1/conversations/FD-999", None, None, 404),
        ("GET", "/api/v1/conversations/not-a-ref", None, None, 404),
        ("POST", f"/api/v1/conversations/{ref}/replies", None, b"{not json", 400),
        ("POST", f"/api/v1/conversations/{ref}/replies", None, b"[1, 2]", 422),
        ("POST", f"/api/v1/conversations/{ref}/replies", {"text": ""}, None, 422),
        ("POST", f"/api/v1/conversations/{ref}/replies",
         {"text": "hi", "author": "G", "extra": 1}, None, 422),
        ("POST", f"/api/v1/conversations/{ref}/replies", None,
         b'{"text": "' + b"x" * (2 * 1024 * 1024) + b'", "author": "G"}', 413),
        ("GET", "/api/v1/report?since=forever", None, None, 422),
    ]
    for method, path, json_body, raw, expected in cases:
        status, body, _ = await api.call(method, path, json=json_body, data=raw,
                                         headers={"Content-Type": "application/json"})
        assert status == expected, (path, status, body)
        assert isinstance(body, dict) and body["error"], (path, body)
    status, report, _ = await api.call("GET", "/api/v1/report?since=7d")
    assert status == 200 and report["overall"]


async def test_the_rate_limit_answers_429_with_retry_after(
        make_settings: Callable[..., Any], daemon_factory: Any,
        http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(make_settings(api={"enabled": True, "rate_limit": "3/1m"}))
    api = Api(http, d, await _token(d, "script", "read"))
    answers = [await api.call("GET", "/api/v1/conversations") for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    assert 0 < int(answers[3][2]["Retry-After"]) <= 60
    other = await _token(d, "other", "read")  # its own allowance
    assert (await api.call("GET", "/api/v1/conversations", token=other))[0] == 200


async def test_openapi_declares_every_route_with_its_schemas(api: Api) -> None:
    async with api.http.get(api.base + "/api/openapi.json") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["openapi"] == "3.1.0"
    for path, methods in doc["paths"].items():
        assert path.startswith("/api/v1/")
        for method, op in methods.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            assert ok, (method, path)
            for status in op["responses"]:
                if status != "204":
                    assert "content" in op["responses"][status], (method, path, status)
            if method in ("post", "patch"):
                assert "requestBody" in op, (method, path)
    assert "/api/v1/conversations/{ref}/replies" in doc["paths"]
    assert doc["components"]["schemas"]["ReplyIn"]["additionalProperties"] is False


async def test_disabled_api_is_not_there(make_settings: Callable[..., Any],
                                         daemon_factory: Any,
                                         http: aiohttp.ClientSession) -> None:
    d = await daemon_factory(make_settings())
    async with http.get(f"http://127.0.0.1:{d.http.port}/api/v1/conversations") as r:
        assert r.status == 404


async def test_token_commands(make_settings: Callable[..., Any], daemon_factory: Any,
                              tmp_path: Any, capsys: Any) -> None:
    from tests.support.helpers import cli_config

    d = await daemon_factory(make_settings(api={"enabled": True}))
    config = cli_config(d, tmp_path)
    code, out, _ = await run_cli(capsys, "-c", config, "token", "create", "shop",
                                 "--scope", "write", "--json")
    assert code == 0
    made = json.loads(out)
    assert made["name"] == "shop" and made["scope"] == "write"
    assert made["token"].startswith("fdt_")
    async with d.store.reader() as s:
        stored = (await s.execute(select(ApiToken))).scalars().one()
    assert made["token"].split("_", 2)[2] not in stored.secret_hash  # only the hash is kept
    code, out, _ = await run_cli(capsys, "-c", config, "token", "list", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "shop"
    assert (await run_cli(capsys, "-c", config, "token", "create", "shop"))[0] == 1
    assert (await run_cli(capsys, "-c", config, "token", "revoke", "shop"))[0] == 0
    code, out, _ = await run_cli(capsys, "-c", config, "token", "list", "--json")
    assert json.loads(out) == []
    assert (await run_cli(capsys, "-c", config, "token", "revoke", "shop"))[0] == 1


async def test_unknown_routes_and_methods_are_json_errors(api: Api) -> None:
    status, body, _ = await api.call("GET", "/api/v1/nothing-here")
    assert status == 404 and "no such route" in body["error"]
    status, body, headers = await api.call("DELETE", "/api/v1/conversations")
    assert status == 405 and "GET" in headers["Allow"] and body["error"]


async def test_inbound_logs_a_phone_call_once(api: Api) -> None:
    call = {"channel": "phone", "external_id": "call-2026-12-06-0931",
            "contact": {"name": "Ada Lovelace", "email": "ada@example.org",
                        "phone": "+44 20 7946 0958"},
            "subject": "Parcel damaged", "text": "Called: the parcel came crushed.",
            "author": "Grace Hopper"}
    status, body, _ = await api.call("POST", "/api/v1/inbound", json=call)
    assert status == 201, body
    reference = body["reference"]
    status, again, _ = await api.call("POST", "/api/v1/inbound", json=call)
    assert (status, again) == (200, {"reference": reference})
    status, detail, _ = await api.call("GET", f"/api/v1/conversations/{reference}")
    assert detail["channel"] == "phone" and detail["first_response_due_at"]
    assert [m["text"] for m in detail["messages"]] == ["Called: the parcel came crushed."]
    assert {"channel": "email", "address": "ada@example.org"} in \
        detail["contact"]["identities"]
    async with api.daemon.store.reader() as s:
        logged = (await s.execute(select(Event).where(Event.kind == "contact_logged"))
                  ).scalars().one()
    assert logged.actor == "Grace Hopper" and logged.data["token"] == "shop"
    # a repeat with an Idempotency-Key and the same body is the first answer
    key = {"Idempotency-Key": "log-1"}
    first = await api.call("POST", "/api/v1/inbound", json={**call, "external_id": "c2"},
                           headers=key)
    assert first[0] == 201
    assert (await api.call("POST", "/api/v1/inbound", json={**call, "external_id": "c2"},
                           headers=key))[:2] == first[:2]
    for bad, field in (({**call, "channel": "fax"}, "channel"),
                       ({**call, "text": "  "}, "text"),
                       ({**call, "contact": {"email": "not-an-address"}}, "email")):
        status, body, _ = await api.call("POST", "/api/v1/inbound", json=bad)
        assert status == 422 and field in body["error"], body


async def test_contacts_tags_export_and_erasure(api: Api) -> None:
    ref = await _conversation(api, frm="Ada Lovelace <ada@example.org>")
    status, detail, _ = await api.call("GET", f"/api/v1/conversations/{ref}")
    contact_id = detail["contact"]["id"]
    path = f"/api/v1/contacts/{contact_id}"
    status, contact, _ = await api.call("GET", path)
    assert status == 200 and contact["name"] == "Ada Lovelace" and contact["tags"] == []
    status, contact, _ = await api.call("PATCH", path, json={
        "name": "Ada King", "tags": ["vip"], "language": "de"})
    assert status == 200, contact
    assert contact["name"] == "Ada King" and contact["tags"] == ["lang:de", "vip"]
    status, body, _ = await api.call("PATCH", path, json={"tags": ["Not A Tag!"]})
    assert status == 422 and body["error"]
    status, export, _ = await api.call("GET", f"{path}/export")
    assert status == 200 and "Ada King" in json.dumps(export)
    assert "Hello, where is my order?" in json.dumps(export)
    status, body, _ = await api.call("DELETE", path)
    assert status == 204 and body == ""
    assert (await api.call("GET", f"{path}/export"))[0] == 404
    assert (await api.call("GET", path))[0] == 404
    assert (await api.call("DELETE", path))[0] == 404
    status, shell, _ = await api.call("GET", f"/api/v1/conversations/{ref}")
    assert status == 200 and shell["status"] == "open"  # a shell keeps its figures
    assert shell["escalation_due_at"] is None and shell["resolution_due_at"] is None
    assert "Hello" not in json.dumps(shell) and "Ada" not in json.dumps(shell)
    assert (await api.call("GET", "/api/v1/contacts/abc"))[0] == 404
    reader = await _token(api.daemon, "viewer", "read")
    assert (await api.call("DELETE", "/api/v1/contacts/1", token=reader))[0] == 403


async def test_the_store_down_is_503_with_retry_after(
        tmp_path: Any, postgres_url: str, make_settings: Callable[..., Any],
        daemon_factory: Any, http: aiohttp.ClientSession) -> None:
    from sqlalchemy.engine import make_url

    from tests.support.tcp_proxy import TcpProxy

    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        d = await daemon_factory(make_settings(
            database_url=proxy.url_for(postgres_url), api={"enabled": True},
            database={"pool_size": 3, "max_overflow": 2, "pool_timeout": "2s",
                      "connect_timeout": "1s", "statement_timeout": "10s"}))
        api = Api(http, d, await _token(d, "shop", "write"))
        assert (await api.call("GET", "/api/v1/conversations"))[0] == 200
        proxy.stop()
        for method, path, body in (("GET", "/api/v1/conversations", None),
                                   ("POST", "/api/v1/conversations/FD-1/notes",
                                    {"text": "x", "author": "G"})):
            status, answer, headers = await api.call(method, path, json=body)
            assert status == 503, answer
            assert "store" in answer["error"] and headers["Retry-After"]
        proxy.start()
        await eventually(lambda: _answers(api), timeout=15)


async def _answers(api: Api) -> bool:
    return (await api.call("GET", "/api/v1/conversations"))[0] == 200


async def test_kept_answers_are_forgotten_after_the_window(
        make_settings: Callable[..., Any], daemon_factory: Any, clock: Any,
        http: aiohttp.ClientSession) -> None:
    """api.idempotency_window: past it, the same key is a new request (the daemon's sweep)."""
    d = await daemon_factory(make_settings(api={"enabled": True,
                                                "idempotency_window": "1h"}), clock=clock)
    api = Api(http, d, await _token(d, "shop", "write"))
    ref = await _conversation(api)
    path, key = f"/api/v1/conversations/{ref}/notes", {"Idempotency-Key": "n-1"}
    first = await api.call("POST", path, json={"text": "one", "author": "G"}, headers=key)
    assert first[0] == 201
    assert d.api is not None and await d.api.forget_old_keys() == 0
    clock.advance(hours=2)
    assert await d.api.forget_old_keys() == 1
    again = await api.call("POST", path, json={"text": "one", "author": "G"}, headers=key)
    assert again[0] == 201 and again[1]["id"] != first[1]["id"]
