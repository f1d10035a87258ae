"""What the team learns, from Slack (issue 19): resolution notes (the slash command and the
Resolve form), conversation tags, similar resolved conversations on the card and by command,
saved replies kept in the store (slash command and the message shortcut). Real SMTP in, the real
slack-bolt against the loopback Slack fake, replies out to a real SMTP sink."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from frontdesk.daemon.cli.main import main
from tests.daemon.desk.test_slack_desk import (
    SUPPORT,
    _texts,
    desk_settings,
    events_url,
    root_of,
    start,
)
from tests.fakes.slack import FakeSlack
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import detail, eventually, mail, send


def runner(slack: FakeSlack, url: str) -> Any:
    async def run(text: str) -> str:
        status, body = await slack.command(url, text)
        assert status == 200, body
        return str(json.loads(body)["text"]) if body else ""
    return run


async def _thread_says(slack: FakeSlack, ts: str, text: str) -> bool:
    return any(text in m["text"] for m in slack.thread(ts))


async def _card_says(slack: FakeSlack, ts: str, text: str) -> bool:
    current = slack.find(SUPPORT, ts)
    return current is not None and text in _texts(current["blocks"])


async def test_resolution_notes_and_tags_from_slash_commands(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail(body="My kettle leaks, I want a refund"))
    root = await root_of(slack)
    run = runner(slack, events_url(d))

    assert await run("tag FD-1 refund Kettle") == "FD-1: Tags: `kettle` `refund`."
    assert (await detail(d.store, 1))["tags"] == ["kettle", "refund"]
    await eventually(lambda: _card_says(slack, root["ts"], ":label: kettle refund"))
    assert await run("tag FD-1 refund") == "FD-1 unchanged (tags: `kettle` `refund`)."
    assert await run("untag FD-1 kettle") == "FD-1: Tags: `refund`."
    assert await run("tag FD-1 -refund warranty") == "FD-1: Tags: `warranty`."
    assert "is not a tag" in await run("tag FD-1 <!channel>")
    assert "is not a tag" in await run("tag FD-1 " + "x" * 51)
    assert (await detail(d.store, 1))["tags"] == ["warranty"]

    said = await run("resolve FD-1 Sent a new kettle & a prepaid <https://ex.com/l|label>")
    assert said == "FD-1: Resolved."
    shown = await detail(d.store, 1)
    assert shown["status"] == "resolved"
    assert shown["resolution_note"] == "Sent a new kettle & a prepaid label (https://ex.com/l)"
    await eventually(lambda: _thread_says(
        slack, root["ts"], ":bulb: *What solved it:*\n>Sent a new kettle &amp; a prepaid"))
    await eventually(lambda: _card_says(slack, root["ts"], "What solved it"))
    # A resolved conversation: a new note replaces the old one, audited.
    assert await run("resolve FD-1 Refunded instead") == "FD-1: Resolved."
    assert (await detail(d.store, 1))["resolution_note"] == "Refunded instead"
    assert "no conversation FD-9" in await run("resolve FD-9 whatever")
    # The Resolve button of a resolved conversation opens no form.
    await slack.click(events_url(d), "frontdesk_resolve", value="FD-1")
    assert slack.views == []


async def test_a_resolve_from_the_command_line_shows_its_note_in_the_thread(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        tmp_path: Any) -> None:
    settings = desk_settings(make_settings, slack)
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail(body="The app crashes at login"))
    root = await root_of(slack)
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n')
    assert await asyncio.to_thread(main, ["resolve", "FD-1", "--note", "Cleared the app's cache",
                                          "--as", "Grace", "-c", str(config)]) == 0
    await eventually(lambda: _thread_says(
        slack, root["ts"], ":information_source: Resolved by *Grace*\n"
                           ":bulb: *What solved it:*\n>Cleared the app's cache"))


async def test_saved_replies_in_the_store_from_slack(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    settings = desk_settings(make_settings, slack, sink,
                             saved_replies={"hello": "Hello {first_name}!"})
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail(body="Where is my parcel?"))
    root = await root_of(slack)
    url = events_url(d)
    run = runner(slack, url)

    assert await run("saved-reply add tracking Hi {first_name}, the tracking link is in "
                     "the shipping mail &amp; your account.") == \
        "Saved the saved reply `tracking`."
    listed = await run("saved-reply list")
    assert "• `hello` (config): Hello {first_name}!" in listed
    assert "• `tracking` (store): Hi {first_name}, the tracking link is in the shipping " \
           "mail &amp; your account." in listed
    assert (await run("reply-with FD-1 tracking")).startswith(
        "Queued the saved reply `tracking` to FD-1")
    await eventually(lambda: _sent(sink))
    assert sink.parsed().get_content().strip() == \
        "Hi Ada, the tracking link is in the shipping mail & your account."
    assert "in the config file" in await run("saved-reply remove hello")
    assert await run("saved-reply remove tracking") == "Removed the saved reply `tracking`."
    assert "no saved reply called `tracking`" in await run("reply-with FD-1 tracking")
    assert "`saved-reply list`" in await run("saved-reply add onlyname")

    # The message shortcut: a staff message's text becomes a saved reply through a form.
    status, _ = await slack.shortcut(url, "frontdesk_save_reply",
                                     "We have sent a <https://ex.com/r|return label> to you.",
                                     thread_ts=root["ts"])
    assert status == 200
    [form] = slack.views
    assert form["callback_id"] == "frontdesk_save_reply"
    [text_block] = [b for b in form["blocks"] if b["block_id"] == "text"]
    assert text_block["element"]["initial_value"] == \
        "We have sent a return label (https://ex.com/r) to you."
    status, body = await slack.submit(url, form, {"name": "two words", "text": "x"})
    assert status == 200 and json.loads(body)["response_action"] == "errors"
    assert "name" in json.loads(body)["errors"]
    status, body = await slack.submit(url, form, {"name": "Return-Label",
                                                  "text": "We sent a return label."})
    assert status == 200 and json.loads(body)["response_action"] == "update"
    assert "`return-label`" in await run("saved-reply list")


async def _sent(sink: SmtpSink) -> bool:
    return len(sink.messages) >= 1


async def test_similar_resolved_conversations_on_the_card_and_by_command(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  database_url=database_url), clock)
    run = runner(slack, events_url(d))
    await send(d.email.smtp.port, mail(
        subject="Refund not received", msgid="<a@example.org>",
        body="I returned the blender two weeks ago and still have not received my refund."))
    first = await root_of(slack)
    assert "Solved before" not in _texts(first["blocks"])  # nothing resolved yet
    assert await run("similar FD-1") == "No resolved conversation is like FD-1 yet."
    await run("resolve FD-1 Refund was stuck at the bank; re-issued it by card")
    await send(d.email.smtp.port, mail(
        frm="Bob <bob@example.net>", subject="where is my money", msgid="<b@example.org>",
        body="Sent the toaster back a while ago, my refund has still not arrived. Where is it?"))
    second = await root_of(slack, n=2)
    shown = _texts(second["blocks"])
    assert "Solved before" in shown
    link = f"<https://slack.com/archives/{SUPPORT}/p{first['ts'].replace('.', '')}|FD-1>"
    assert link in shown and "re-issued it by card" in shown
    said = await run("similar FD-2")
    assert said.startswith("Resolved conversations like FD-2:\n• " + link)
    assert "no conversation FD-9" in await run("similar FD-9")
