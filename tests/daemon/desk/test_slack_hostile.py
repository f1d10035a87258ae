"""Hostile requests to ``POST /slack/events`` against a running daemon (issue 14): nothing
unauthenticated is logged beyond one short line (slack-bolt logged the whole unverified body at
INFO), and a signed request with malformed fields gets a 4xx or a harmless 200 with at most one
log line: never a 500, never a traceback, nothing stored."""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from frontdesk.storage.models import Message, SlackEvent, SlackMessage
from tests.daemon.desk.test_slack_desk import (
    SUPPORT,
    _count,
    desk_settings,
    events_url,
    root_of,
    start,
)
from tests.fakes.slack import SIGNING_SECRET, FakeSlack, thread_message
from tests.support.helpers import mail, send

MIB = 1024 * 1024


_ELSEWHERE = ("frontdesk.daemon.process.outbox",)  # the outbox worker's own lines, meanwhile


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The log lines the requests caused (the outbox worker's posting runs on meanwhile)."""
    return [r.getMessage() for r in caplog.records if r.name not in _ELSEWHERE]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage()[:200] for r in caplog.records
            if r.exc_info or "Traceback" in r.getMessage()]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, data=body,
                                                                headers=headers) as r:
        return r.status, await r.text()


async def test_an_unsigned_megabyte_is_refused_with_one_short_log_line(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    caplog.set_level(logging.DEBUG, logger="slack_bolt")
    caplog.set_level(logging.DEBUG, logger="frontdesk.daemon.desk")
    event = json.dumps(FakeSlack.event_body(thread_message(SUPPORT, "1.1", "x")))
    bodies = {
        "unsigned": (event + " " * (MIB - len(event))).encode(),
        "forged": (event + " " * (MIB - len(event))).encode(),
        "stale": (event + " " * (MIB - len(event))).encode(),
    }
    ts = str(int(time.time()))
    headers = {
        "unsigned": {"Content-Type": "application/json"},
        "forged": {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": "v0=" + "0" * 64},
        "stale": {"Content-Type": "application/json", **slack.signature_headers(
            bodies["stale"].decode(), int(time.time()) - 3600)},
    }
    for name, body in bodies.items():
        assert len(body) == MIB
        caplog.clear()
        status, _ = await _post(events_url(d), body, headers[name])
        assert status == 401, name
        lines = _lines(caplog)
        assert len(lines) <= 1 and all(len(line) < 300 for line in lines), \
            (name, [line[:200] for line in lines], sum(map(len, lines)))
    assert await _count(d, SlackEvent) == 0
    # Slack's certificate check of a slash command URL still gets its 200
    caplog.clear()
    status, _ = await _post(events_url(d), b"ssl_check=1&token=legacy",
                            {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and _lines(caplog) == []


async def test_signed_requests_with_malformed_fields_get_a_4xx_or_a_harmless_200(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        caplog: pytest.LogCaptureFixture) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    url = events_url(d)
    messages_before = await _count(d, Message)

    def event(**fields: Any) -> str:
        message = thread_message(SUPPORT, root["ts"], "hi")
        message.update(fields)
        return json.dumps(FakeSlack.event_body(message))

    def envelope(**fields: Any) -> str:
        return json.dumps({**FakeSlack.event_body(thread_message(SUPPORT, root["ts"], "hi")),
                           **fields})

    def click(payload: Any) -> str:
        return urlencode({"payload": json.dumps(payload)})

    good_click = FakeSlack.block_actions("frontdesk_claim", value="FD-1")
    jsons = [
        event(ts="abc"), event(ts="abc", event_ts="abc"), event(thread_ts="abc"),
        event(ts=5), event(user=["U0GRACE"]), event(text={"x": 1}), event(channel=None),
        event(ts="1790000400.000001", thread_ts={"a": 1}),
        envelope(event="x"), envelope(event=5), envelope(event=None), envelope(event=[1]),
        envelope(event_id=["x"]), envelope(team_id={"x": 1}), envelope(authorizations="x"),
        envelope(authorizations=[5]), envelope(type=5), envelope(team=5), envelope(enterprise=5),
        json.dumps({"type": "url_verification", "challenge": ["x"]}),
        "[1, 2]", '"x"', "{", "[" * 100_000 + "]" * 100_000,
        '{"event": ' + "[" * 5_000 + "]" * 5_000 + "}",
    ]
    forms = [
        "payload=not-json", "payload=" + "%5B" * 50_000, click("x"), click([1]),
        click({**good_click, "actions": "x"}), click({**good_click, "actions": ["x"]}),
        click({**good_click, "actions": [{"action_id": "frontdesk_claim", "value": ["x"]}]}),
        click({**good_click, "user": "x"}), click({**good_click, "channel": "x"}),
        click({**good_click, "team": 5}), click({**good_click, "type": 5}),
        click({**good_click, "actions": [{"action_id": "frontdesk_snooze",
                                          "selected_option": "x"}]}),
        urlencode({**FakeSlack.command_form("show FD-1"), "command": ""}),
        "command=%2Ffrontdesk&text=show+FD-1",
    ]
    cases = [(b, "application/json") for b in jsons] + \
            [(b, "application/x-www-form-urlencoded") for b in forms]
    for body, content_type in cases:
        caplog.clear()
        status, _ = await slack.post_signed(url, body, content_type)
        assert status in (200, 400, 404), (body[:80], status)
        lines = _lines(caplog)
        assert _tracebacks(caplog) == [], body[:80]
        assert len(lines) <= 1, (body[:80], [line[:200] for line in lines])
    # a timestamp header that is no number, signed as such
    caplog.clear()
    body = event()
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": "abc",
               "X-Slack-Signature": slack.signature_headers(body)["X-Slack-Signature"]}
    from slack_sdk.signature import SignatureVerifier

    headers["X-Slack-Signature"] = str(SignatureVerifier(SIGNING_SECRET).generate_signature(
        timestamp="abc", body=body))
    status, _ = await _post(url, body.encode(), headers)
    assert status == 401
    assert _tracebacks(caplog) == [] and len(_lines(caplog)) <= 1, _lines(caplog)
    # nothing of it stored: no staff reply, no message, no seen event
    assert await _count(d, Message) == messages_before
    assert await _count(d, SlackMessage) == 0
    # and the desk still works
    status, _ = await slack.event(url, thread_message(SUPPORT, root["ts"], "a real reply"))
    assert status == 200
    assert await _count(d, SlackMessage) == 1


async def test_a_failing_listener_is_one_log_line_without_a_traceback(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from frontdesk.daemon.desk.actions import DeskActions

    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    await root_of(slack)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(DeskActions, "change", broken)
    caplog.clear()
    status, _ = await slack.click(events_url(d), "frontdesk_claim", value="FD-1")
    assert status == 500  # a real fault: Slack may try again
    assert _tracebacks(caplog) == []
    assert [line for line in _lines(caplog) if "RuntimeError" in line] == [
        "a Slack request failed: RuntimeError: the store went away"]
