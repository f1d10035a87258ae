"""The Slack desk's pure parts: escaping and cutting customer text, Slack text back to plain,
routing rules, the [slack] settings, snooze times and saved replies."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from frontdesk.config.schema import SlackRoute
from frontdesk.daemon.desk.blocks import cut, escape, quote, slack_to_plain
from frontdesk.daemon.desk.queue import route
from frontdesk.daemon.process.app import build_channels
from frontdesk.daemon.process.registry import Settings
from frontdesk.domain.business_hours import calendar_from_settings
from frontdesk.domain.conversations import (
    InvalidAction,
    next_business_morning,
    render_saved_reply,
    snooze_until,
)
from frontdesk.domain.sla import contact_tags


def test_customer_text_is_escaped_and_cut_between_characters() -> None:
    assert escape("a & <b> <!channel>") == "a &amp; &lt;b&gt; &lt;!channel&gt;"
    assert cut("short & sweet", 100) == "short &amp; sweet"
    for n in range(8, 30):
        text = cut("&<>" * 50, n)
        assert len(text) <= n
        body = text.removesuffix(" …")
        assert body.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "") == ""
    assert cut("x" * 50, 10) == "xxxxxxxx …"


def test_quote_keeps_lines_and_stays_within_the_limit() -> None:
    assert quote("one\r\n\r\n\r\ntwo <3\n", 100) == ">one\n>\n>two &lt;3"
    long = quote("\n".join(["line & more"] * 500), 300, note=" (cut)")
    assert len(long) <= 300 and long.endswith(" (cut)")
    assert all(line.startswith(">") for line in long.removesuffix(" (cut)").split("\n"))
    assert quote("", 100) == ">_(no text)_"


def test_slack_markup_becomes_plain_text_for_the_customer() -> None:
    said = slack_to_plain("Hi &lt;Ada&gt; &amp; co: see <https://x.test/a|the label>, "
                          "<https://x.test/b>, <mailto:help@x.test|help@x.test>, ask <@U1>, "
                          "<@U2|alan> in <#C1|general> <!here>", {"U1": "Grace Hopper"})
    assert said == ("Hi <Ada> & co: see the label (https://x.test/a), https://x.test/b, "
                    "help@x.test, ask @Grace Hopper, @alan in #general @here")


ROUTES = [SlackRoute(channel_id="C0VIP", contact_tags=["VIP"]),
          SlackRoute(channel_id="C0SMS", customer_channels=["sms", "whatsapp"]),
          SlackRoute(channel_id="C0DE", inbox_addresses=["hilfe@example.de"]),
          SlackRoute(channel_id="C0BILL", keywords=["refund"], customer_channels=["email"])]


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"channel": "email", "inbox_address": None, "text": "hello", "tags": {"vip"}}, "C0VIP"),
    ({"channel": "sms", "inbox_address": None, "text": "hello", "tags": set()}, "C0SMS"),
    ({"channel": "whatsapp", "inbox_address": None, "text": "refund", "tags": set()}, "C0SMS"),
    ({"channel": "email", "inbox_address": "hilfe+FD-3@example.de", "text": "", "tags": set()},
     "C0DE"),
    ({"channel": "email", "inbox_address": None, "text": "A REFUND, now", "tags": set()},
     "C0BILL"),
    ({"channel": "email", "inbox_address": None, "text": "refunded", "tags": set()},
     "C0DEFAULT"),
    ({"channel": "telegram", "inbox_address": None, "text": "refund", "tags": set()},
     "C0DEFAULT"),
])
def test_routes_first_match_wins(kwargs: dict[str, Any], expected: str) -> None:
    assert route(ROUTES, "C0DEFAULT", **kwargs) == expected


def test_contact_tags() -> None:
    assert contact_tags(SimpleNamespace(tags={"vip": True, "old": False,
                                              "tags": ["Press"]})) == {"vip", "press"}
    assert contact_tags(None) == set()


def _slack(**keys: Any) -> Settings:
    return Settings.model_validate({"slack": keys})


def test_slack_settings_say_what_is_missing() -> None:
    def line(**keys: Any) -> str:
        [found] = [x for x in build_channels(_slack(**keys))[1] if x.startswith("slack")]
        return found

    assert line() == "slack desk disabled: slack.bot_token is not set"
    assert line(bot_token="xoxb-1", signing_secret="s") == \
        "slack desk disabled: slack.channel_id is not set (the channel for conversations, " \
        "like C0123456789)"
    assert "slack.signing_secret is not set" in line(bot_token="xoxb-1", channel_id="C1")
    assert "slack.app_token is not set" in line(bot_token="xoxb-1", channel_id="C1",
                                                mode="socket")
    with pytest.raises(ValidationError, match="at least one of"):
        _slack(routes=[{"channel_id": "C2"}])
    ok = _slack(bot_token="xoxb-1", channel_id="C1", mode="socket", app_token="xapp-1",
                api_base_url="http://127.0.0.1:1/api")
    assert ok.slack.api_base_url == "http://127.0.0.1:1/api/"
    assert ok.slack.replies_enabled is True and ok.slack.post_interval.total_seconds() == 1
    assert "xoxb-1" not in repr(ok) and "xapp-1" not in repr(ok)
    with pytest.raises(ValidationError, match="saved reply's name"):
        Settings.model_validate({"saved_replies": {"no spaces": "x"}})
    assert not any("slack" in x for x in build_channels(ok)[1])


def test_snooze_times_follow_the_business_calendar() -> None:
    sla = Settings.model_validate({"sla": {"business_hours": "Mon-Fri 09:00-17:00",
                                           "timezone": "Europe/London",
                                           "holidays": ["2026-11-30"]}}).sla
    calendar = calendar_from_settings(sla)
    friday = datetime(2026, 11, 27, 16, 0, tzinfo=UTC)
    assert next_business_morning(friday, calendar) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    monday_early = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # before opening: still tomorrow
    assert snooze_until("morning", monday_early, calendar) == \
        datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert snooze_until("4h", friday, calendar) == datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    always = calendar_from_settings(Settings.model_validate(
        {"sla": {"timezone": "America/New_York"}}).sla)
    assert next_business_morning(friday, always) == datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
    with pytest.raises(InvalidAction, match="is not a snooze"):
        snooze_until("later", friday, calendar)


def test_saved_replies_fill_in_the_contact() -> None:
    conversation = SimpleNamespace(contact=SimpleNamespace(name="Ada Lovelace"),
                                   reference="FD-12", subject="Order 1234")
    template = "Hi {first_name}, about {reference} ({subject}): {unknown} — {agent}"
    assert render_saved_reply(template, conversation, agent="Grace") == \
        "Hi Ada, about FD-12 (Order 1234): {unknown} — Grace"  # type: ignore[arg-type]
    nameless = SimpleNamespace(contact=SimpleNamespace(name=""), reference="FD-1", subject="")
    assert render_saved_reply("Hi {name},", nameless) == "Hi there,"  # type: ignore[arg-type]
    with pytest.raises(InvalidAction, match="literal brace"):
        render_saved_reply("Hi {0}", nameless)  # type: ignore[arg-type]
