"""The Slack staff desk end to end: real SMTP in, the real slack_sdk/slack-bolt against a loopback
fake of Slack, staff replies out to a real SMTP sink; SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from frontdesk.domain.conversations import add_staff_reply, get_conversation, snooze
from frontdesk.storage.models import (
    Contact,
    Event,
    Message,
    Outbox,
    SlackEvent,
    SlackMessage,
    SlackThread,
)
from tests.fakes.slack import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER_ID,
    SIGNING_SECRET,
    FakeSlack,
    thread_message,
)
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import conversations, detail, eventually, mail, processed, send

SUPPORT = "C0SUPPORT"


def desk_settings(make_settings: Any, slack: FakeSlack, sink: SmtpSink | None = None, *,
                  database_url: str | None = None, slack_keys: dict[str, Any] | None = None,
                  **sections: Any) -> Any:
    keys = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET, "channel_id": SUPPORT,
            "api_base_url": slack.base_url, "post_interval": "0s", **(slack_keys or {})}
    if sink is not None:
        sections.setdefault("email", {})["outbound"] = {"port": sink.port}
    return make_settings(database_url=database_url, slack=keys, **sections)


async def start(daemon_factory: Any, settings: Any, clock: Any) -> Any:
    d = await daemon_factory(settings, clock=clock)
    await eventually(lambda: _ready(d))
    return d


async def _ready(d: Any) -> bool:
    return all(s.ready for s in d.services)


def events_url(d: Any) -> str:
    return f"http://127.0.0.1:{d.http.port}/slack/events"


def desk(d: Any) -> Any:
    [service] = [s for s in d.services if s.name == "slack"]
    return service


async def root_of(slack: FakeSlack, channel: str = SUPPORT, n: int = 1) -> dict[str, Any]:
    async def posted() -> list[dict[str, Any]]:
        return slack.roots(channel) if len(slack.roots(channel)) >= n else []
    return (await eventually(posted))[n - 1]


def _texts(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def _elements(root: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [actions] = [b for b in root["blocks"] if b["type"] == "actions"]
    return {e["action_id"]: e for e in actions["elements"]}


async def _count(d: Any, model: Any, *where: Any) -> int:
    async with d.store.reader() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where)))\
            .scalar_one()


# -- mirror --------------------------------------------------------------------------------------

async def test_email_becomes_root_card_and_later_mail_goes_in_the_thread(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  database_url=database_url), clock)
    body = "Hello, where is my order?\nIt says <!channel> & <b>shipped</b>."
    await send(d.email.smtp.port, mail(body=body))
    root = await root_of(slack)
    assert root["metadata"] == {"event_type": "frontdesk_conversation",
                                "event_payload": {"reference": "FD-1", "conversation_id": 1}}
    header = root["blocks"][0]
    assert header == {"type": "header", "text": {"type": "plain_text",
                                                  "text": "FD-1 · Order 1234 never arrived"}}
    shown = _texts(root["blocks"])
    assert "Ada Lovelace" in shown and "ada@example.org" in shown
    assert "first conversation with this contact" in shown
    assert ">It says &lt;!channel&gt; &amp; &lt;b&gt;shipped&lt;/b&gt;." in shown
    assert "<!channel>" not in shown  # no customer can ping the channel
    assert "first response due <!date^1795431600^" in shown  # 11:00 UTC, an hour after 10:00
    elements = _elements(root)
    assert elements["frontdesk_claim"]["value"] == "FD-1"
    assert elements["frontdesk_resolve"]["value"] == "FD-1"
    assert [o["value"] for o in elements["frontdesk_snooze"]["options"]] == \
        ["FD-1 1h", "FD-1 4h", "FD-1 morning"]
    assert elements["frontdesk_priority"]["initial_option"]["value"] == "FD-1 normal"
    thread = await eventually(lambda: _thread_record(d, 1))
    assert (thread.channel_id, thread.ts) == (SUPPORT, root["ts"])

    await send(d.email.smtp.port, mail(subject="Re: Order 1234 never arrived",
                                       body="Any news? It is a gift.", msgid="<m2@example.org>",
                                       In_Reply_To="<m1@example.org>"))
    [second] = await eventually(lambda: _thread(slack, root["ts"]))
    assert second["channel"] == SUPPORT
    assert "*Ada Lovelace* (Email)" in second["text"] and ">Any news? It is a gift." in \
        second["text"]
    assert len(slack.roots()) == 1


async def _thread_record(d: Any, conversation_id: int) -> SlackThread | None:
    async with d.store.reader() as s:
        thread = await s.get(SlackThread, conversation_id)
    return thread if thread is not None and thread.ts else None


async def _thread(slack: FakeSlack, ts: str, n: int = 1) -> list[dict[str, Any]]:
    found = [m for m in slack.thread(ts) if not m.get("external")]
    return found if len(found) >= n else []


async def test_a_second_conversation_counts_the_earlier_one(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    first = await root_of(slack)
    await eventually(lambda: _thread_record(d, 1))
    async with d.store.session() as s:  # as `frontdesk resolve FD-1` does, from another process
        from frontdesk.domain.conversations import resolve

        await resolve(s, await get_conversation(s, 1), actor="cli", now=clock())
    await eventually(lambda: _updated(slack, first, ":white_check_mark: Resolved"))
    await send(d.email.smtp.port, mail(subject="Wrong size", msgid="<m9@example.org>"))
    second = await root_of(slack, n=2)
    assert "1 earlier conversation; the last, FD-1 (Order 1234 never arrived), is resolved" in \
        _texts(second["blocks"])


async def test_a_long_message_is_cut_within_slack_limits(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail(body="&" * 5000))
    root = await root_of(slack)
    section = root["blocks"][2]["text"]["text"]
    assert len(section) <= 3000
    assert section.startswith(">&amp;&amp;") and "cut; the whole message is in" in section
    assert "&am " not in section and not section.split(" …")[0].endswith("&am")


# -- replies from the thread ---------------------------------------------------------------------

async def test_thread_reply_reaches_the_customer_and_gets_a_reaction(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack, sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    event = thread_message(SUPPORT, root["ts"], "We are on it &amp; <@U0ALAN> will write "
                           "<https://x.test/t|tracking> soon.", ts="1790000100.000100")
    status, _ = await slack.event(events_url(d), event, event_id="Ev0REPLY1")
    assert status == 200
    await eventually(lambda: _sent(sink, 1))
    sent = sink.parsed()
    assert sent["In-Reply-To"] == "<m1@example.org>"
    assert "<m1@example.org>" in sent["References"]
    assert sent["Subject"] == "Re: Order 1234 never arrived [FD-1]"
    assert sent.get_content().strip() == \
        "We are on it & @Alan Turing will write tracking (https://x.test/t) soon."
    reply = (await detail(d.store, 1))["messages"][-1]
    assert (reply["author"], reply["author_name"]) == ("staff", "Grace Hopper")
    await eventually(lambda: _reacted(slack, "1790000100.000100", "white_check_mark"))
    async with d.store.reader() as s:
        [audit] = (await s.execute(select(Event).where(Event.kind == "staff_reply")))\
            .scalars().all()
    assert audit.actor == "Grace Hopper <grace@example.com>"
    assert audit.data["slack_user"] == "U0GRACE" and audit.data["via"] == "slack"

    # Slack retries the same event (no answer within 3 s): nothing new.
    status, _ = await slack.event(events_url(d), event, event_id="Ev0REPLY1", retry_num=1)
    assert status == 200
    # The same message again under another event id (a redelivery): still nothing new.
    status, _ = await slack.event(events_url(d), event, event_id="Ev0REPLY1B")
    assert status == 200
    await d.outbox.deliver_due()
    assert len(sink.messages) == 1
    assert await _count(d, Message, Message.direction == "out") == 1
    assert len(slack.called("users.info")) == 2  # Grace and Alan, each once: cached


async def _sent(sink: SmtpSink, n: int) -> bool:
    return len(sink.messages) >= n


async def _reacted(slack: FakeSlack, ts: str, name: str) -> bool:
    message = slack.find(SUPPORT, ts)
    return message is not None and name in message["reactions"]


async def test_a_reply_before_the_root_is_recorded_reaches_the_customer(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack, sink: SmtpSink) -> None:
    # Slack shows the root at once but answers the post late (the outbox records a root's ts
    # when Slack answers, with the rest of its round of sends), and a staff member answers in
    # the thread meanwhile.
    slack.stall_sends_after = 1
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    assert await _thread_record(d, 1) is None  # posted, not recorded yet
    early = thread_message(SUPPORT, root["ts"], "It left our depot this morning.",
                           ts="1790000100.000100")
    status, _ = await slack.event(events_url(d), early, event_id="Ev0EARLY")
    assert status == 200
    assert (await _thread_record(d, 1)).ts == root["ts"]  # type: ignore[union-attr]
    # a thread that is not a frontdesk conversation, while the root is in flight: ignored
    foreign = thread_message(SUPPORT, "1700000000.000001", "lunch?", ts="1790000100.000200")
    status, _ = await slack.event(events_url(d), foreign, event_id="Ev0FOREIGN")
    assert status == 200
    assert await _count(d, SlackMessage) == 1

    # Slack cannot be asked whose root a thread is: not answered 200, so Slack sends it again
    early2 = thread_message(SUPPORT, root["ts"], "Tracking follows.", ts="1790000100.000300")
    slack.fail_next["conversations.history"] = [(500, {"ok": False,
                                                       "error": "internal_error"}, {})]
    async with d.store.session() as s:  # another root of this channel is being posted
        await s.execute(SlackThread.__table__.update().where(SlackThread.conversation_id == 1)
                        .values(ts=None))
    status, _ = await slack.event(events_url(d), early2, event_id="Ev0EARLY2")
    assert status != 200
    assert await _count(d, SlackMessage) == 1
    status, _ = await slack.event(events_url(d), early2, event_id="Ev0EARLY2", retry_num=1)
    assert status == 200

    slack.unstall()
    await eventually(lambda: _sent(sink, 2))
    assert sink.bodies() == \
        ["It left our depot this morning.", "Tracking follows."]
    assert (await eventually(lambda: _thread_record(d, 1))).ts == root["ts"]
    assert len([m for m in slack.roots(SUPPORT) if m.get("metadata")]) == 1  # posted once
    assert await _count(d, SlackMessage) == 2


async def test_bots_edits_deletions_and_foreign_threads_are_ignored(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    ts = root["ts"]
    ignored = [
        thread_message(SUPPORT, ts, "our own post", user=BOT_USER_ID, bot_id=BOT_ID,
                       ts="1790000200.000001"),
        thread_message(SUPPORT, ts, "another bot", user="U0OTHERBOT", bot_id="B0OTHER",
                       subtype="bot_message", ts="1790000200.000002"),
        {"type": "message", "subtype": "message_changed", "channel": SUPPORT, "hidden": True,
         "ts": "1790000200.000003", "message": {"type": "message", "user": "U0GRACE",
                                                "text": "edited", "ts": "1790000200.000001",
                                                "thread_ts": ts}},
        {"type": "message", "subtype": "message_deleted", "channel": SUPPORT, "hidden": True,
         "ts": "1790000200.000004", "deleted_ts": "1790000200.000001"},
        thread_message(SUPPORT, "1700000000.000001", "a thread that is not ours",
                       ts="1790000200.000005"),
        {"type": "message", "channel": SUPPORT, "user": "U0GRACE", "text": "top level",
         "ts": "1790000200.000006"},
        # (a reply with files, subtype file_share, is a staff reply: tests/daemon/desk/
        # test_slack_files.py)
    ]
    for i, event in enumerate(ignored):
        status, _ = await slack.event(events_url(d), event, event_id=f"Ev0IGN{i}")
        assert status == 200
    status, _ = await slack.event(events_url(d), {"type": "reaction_added", "user": "U0GRACE",
                                                  "reaction": "eyes"})
    assert status == 200
    await d.outbox.deliver_due()
    assert await _count(d, Message) == 1  # the customer's mail only
    assert await _count(d, SlackMessage) == 0
    assert sink.messages == []


async def test_note_stays_internal(make_settings: Any, daemon_factory: Any, clock: Any,
                                   slack: FakeSlack, sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    await slack.event(events_url(d), thread_message(
        SUPPORT, root["ts"], "Note: she called, the parcel is at the neighbour's",
        ts="1790000300.000001"))
    await eventually(lambda: _reacted(slack, "1790000300.000001", "memo"))
    note = (await detail(d.store, 1))["messages"][-1]
    assert note["note"] is True and note["text"] == "she called, the parcel is at the neighbour's"
    assert note["delivery_status"] is None and note["author_name"] == "Grace Hopper"
    assert await _count(d, Outbox, Outbox.kind == "deliver") == 0
    assert sink.messages == []
    assert (await detail(d.store, 1))["status"] == "open"  # a note is no answer


async def test_forged_or_stale_signature_is_refused_and_nothing_stored(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    import time

    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    event = thread_message(SUPPORT, root["ts"], "hello", ts="1790000400.000001")
    body = json.dumps(FakeSlack.event_body(event, "Ev0FORGED"))
    forged = await slack.post_signed(events_url(d), body, "application/json",
                                     secret="not-the-signing-secret")
    stale = await slack.post_signed(events_url(d), body, "application/json",
                                    timestamp=int(time.time()) - 600)
    async with aiohttp.ClientSession() as session, session.post(
            events_url(d), data=body, headers={"Content-Type": "application/json"}) as r:
        unsigned = r.status
    assert forged[0] == stale[0] == unsigned == 401
    assert await _count(d, SlackEvent) == 0
    assert await _count(d, Message) == 1
    challenge = json.dumps({"token": "x", "challenge": "c4ll3ng3", "type": "url_verification"})
    status, text = await slack.post_signed(events_url(d), challenge, "application/json")
    assert status == 200 and "c4ll3ng3" in text


async def test_failed_delivery_is_explained_in_the_thread(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    sink.fail_with, sink.fail_at = "550 5.1.1 <ada@example.org>: no such user", "RCPT"
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    await slack.event(events_url(d), thread_message(SUPPORT, root["ts"], "Hello?",
                                                    ts="1790000500.000001"))
    [failure] = await eventually(lambda: _thread(slack, root["ts"]))
    assert failure["text"].startswith(":warning: The reply by *Grace Hopper* could not be "
                                      "delivered to ada@example.org (Email): ")
    assert "refused the recipient ada@example.org" in failure["text"]
    assert slack.find(SUPPORT, "1790000500.000001") is None  # no reaction


async def test_reply_from_the_command_line_is_mirrored_in_the_thread(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    async with d.store.session() as s:
        await add_staff_reply(s, await get_conversation(s, 1), "Refund issued.", author="Linus",
                              replies=d.replies, now=clock())
    d.outbox.kick()
    [mirrored] = await eventually(lambda: _thread(slack, root["ts"]))
    assert mirrored["text"] == ":outbox_tray: *Linus* replied (Email to ada@example.org)\n" \
                               ">Refund issued."
    assert len(sink.messages) == 1


async def test_alerts_only_desk_keeps_thread_messages_as_notes(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  slack_keys={"replies_enabled": False}), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    assert "alerts only" in _texts(root["blocks"])
    for i in range(2):
        await slack.event(events_url(d), thread_message(SUPPORT, root["ts"], f"reply {i}",
                                                        ts=f"1790000600.00000{i}"))
    notices = await eventually(lambda: _thread(slack, root["ts"]))
    await eventually(lambda: _reacted(slack, "1790000600.000001", "memo"))
    notices = [m for m in slack.thread(root["ts"]) if not m.get("external")]
    assert len(notices) == 1 and "alerts-only" in notices[0]["text"]
    messages = (await detail(d.store, 1))["messages"]
    assert [m["note"] for m in messages] == [False, True, True]
    assert sink.messages == []
    status, text = await slack.command(events_url(d), "reply-with FD-1 thanks")
    assert status == 200 and "Replies are off" in text


# -- actions -------------------------------------------------------------------------------------

async def test_claim_snooze_priority_and_resolve_buttons(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack) -> None:
    settings = desk_settings(make_settings, slack, database_url=database_url,
                             sla={"business_hours": "Mon-Fri 09:00-17:00",
                                  "timezone": "Europe/London"})
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    url = events_url(d)
    assert (await slack.click(url, "frontdesk_claim", value="FD-1",
                              message_ts=root["ts"]))[0] == 200
    assert (await detail(d.store, 1))["assignee"] == "Grace Hopper"
    await eventually(lambda: _updated(slack, root, "Grace Hopper"))
    assert (await slack.click(url, "frontdesk_priority", selected="FD-1 urgent"))[0] == 200
    assert (await slack.click(url, "frontdesk_snooze", selected="FD-1 morning"))[0] == 200
    shown = await detail(d.store, 1)
    assert shown["priority"] == "urgent" and shown["status"] == "snoozed"
    async with d.store.reader() as s:
        conversation = await get_conversation(s, 1)
    # Monday 10:00 UTC (10:00 London) → Tuesday 09:00 London = 09:00 UTC.
    assert conversation.snoozed_until.isoformat() == "2026-11-24T09:00:00+00:00"
    # Resolve asks what solved it (optional) in a form; sending it resolves with the note.
    assert (await slack.click(url, "frontdesk_resolve", value="FD-1"))[0] == 200
    assert (await detail(d.store, 1))["status"] == "snoozed"
    [form] = slack.views
    assert form["callback_id"] == "frontdesk_resolve_note" and form["private_metadata"] == "FD-1"
    assert (await slack.submit(url, form, {"note": "Sent a new kettle <b>free</b>"}))[0] == 200
    shown = await detail(d.store, 1)
    assert shown["status"] == "resolved"
    assert shown["resolution_note"] == "Sent a new kettle <b>free</b>"
    await eventually(lambda: _updated(slack, root, "Resolved"))
    assert "frontdesk_reopen" in _elements(slack.find(SUPPORT, root["ts"]) or {})
    async with d.store.reader() as s:
        audit = [(e.kind, e.actor, e.data.get("via")) for e in (await s.execute(
            select(Event).where(Event.actor.like("Grace%")).order_by(Event.id))).scalars()]
    grace = "Grace Hopper <grace@example.com>"
    assert audit == [("conversation_assigned", grace, "slack"),
                     ("priority_changed", grace, "slack"),
                     ("conversation_snoozed", grace, "slack"),
                     ("conversation_resolved", grace, "slack")]
    said = [m["text"] for m in await eventually(lambda: _thread(slack, root["ts"], 4))]
    assert said[0] == ":information_source: Claimed by *Grace Hopper*"
    assert said[3] == (":information_source: Resolved by *Grace Hopper*\n"
                       ":bulb: *What solved it:*\n>Sent a new kettle &lt;b&gt;free&lt;/b&gt;")
    # A click on an unknown conversation is answered to the clicker alone.
    await slack.click(url, "frontdesk_resolve", value="FD-99")
    assert slack.ephemeral[-1]["text"] == ":warning: no conversation FD-99"


async def test_a_new_conversation_needs_no_refresh_of_its_card_until_it_changes(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  scheduler={"enabled": True}), clock)
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    [ack] = await eventually(lambda: _thread(slack, root["ts"]))  # acknowledged meanwhile
    assert "Automatic message sent" in ack["text"] and len(sink.messages) == 1
    # The card was posted showing the new conversation, and the acknowledgement is not on
    # it: none of the events so far queues a refresh (each was a render and a comparison).
    await desk(d).cards.refresh_roots()
    assert await _count(d, Outbox, Outbox.idempotency_key.like("slack-update-%")) == 0
    assert slack.called("chat.update") == []
    # A customer's message that opens a snoozed conversation again changes the card.
    async with d.store.session() as s:
        await snooze(s, await get_conversation(s, 1), clock() + timedelta(hours=4),
                     actor="Grace Hopper", now=clock())
    d.outbox.kick()
    await eventually(lambda: _updated(slack, root, "Snoozed"))
    await send(d.email.smtp.port, mail(subject="Re: Order 1234 never arrived", body="Hello?",
                                       msgid="<m2@example.org>", In_Reply_To="<m1@example.org>"))
    await eventually(lambda: _updated(slack, root, ":large_green_circle: Open"))


async def _updated(slack: FakeSlack, root: dict[str, Any], text: str) -> bool:
    current = slack.find(SUPPORT, root["ts"])
    return current is not None and "edited" in current and text in _texts(current["blocks"])


async def test_slash_commands(make_settings: Any, daemon_factory: Any, clock: Any,
                              slack: FakeSlack, sink: SmtpSink) -> None:
    settings = desk_settings(
        make_settings, slack, sink,
        saved_replies={"refund": "Hi {first_name}, your refund for {reference} is on its way."})
    d = await start(daemon_factory, settings, clock)
    await send(d.email.smtp.port, mail(body="I want a refund for the broken kettle"))
    root = await root_of(slack)
    url = events_url(d)

    async def run(text: str) -> str:
        status, body = await slack.command(url, text)
        assert status == 200
        answer = json.loads(body)
        assert answer["response_type"] == "ephemeral"
        return str(answer["text"])

    assert "reply-with FD-12 NAME" in await run("help")
    assert await run("assign FD-1 <@U0ALAN|alan>") == "FD-1: Assigned to Alan Turing."
    assert (await detail(d.store, 1))["assignee"] == "Alan Turing"
    assert (await run("snooze FD-1 2h")).startswith("FD-1: Snoozed until <!date^")
    async with d.store.reader() as s:
        assert (await get_conversation(s, 1)).snoozed_until.isoformat() == \
            "2026-11-23T12:00:00+00:00"
    assert await run("resolve FD-1") == "FD-1: Resolved."
    assert await run("resolve FD-1") == "FD-1 unchanged (it is resolved)."
    assert await run("reopen 1") == "FD-1: Reopened."
    shown = await run("show FD-1")
    assert shown.startswith("*FD-1* · Order 1234 never arrived\nStatus *open*")
    assert "assignee Alan Turing" in shown and "I want a refund for the broken kettle" in shown
    assert (await run("search kettle")).startswith("Conversations that mention “kettle”:\n"
                                                   "• *FD-1* (open, email) Order 1234")
    assert "No conversation mentions" in await run("search teapot")
    assert "no conversation FD-7" in await run("resolve FD-7")
    assert "no saved reply called `nope`" in await run("reply-with FD-1 nope")
    assert (await run("reply-with FD-1 refund")).startswith(
        "Queued the saved reply `refund` to FD-1")
    await eventually(lambda: _sent(sink, 1))
    assert sink.parsed().get_content().strip() == \
        "Hi Ada, your refund for FD-1 is on its way."
    mirrored = await eventually(lambda: _saved_reply_posted(slack, root["ts"]))
    assert mirrored
    async with d.store.reader() as s:
        kinds = [(e.kind, e.actor) for e in (await s.execute(
            select(Event).where(Event.actor.like("Grace%")).order_by(Event.id))).scalars()]
    grace = "Grace Hopper <grace@example.com>"
    assert kinds == [("conversation_assigned", grace), ("conversation_snoozed", grace),
                     ("conversation_resolved", grace), ("conversation_reopened", grace),
                     ("staff_reply", grace)]


async def test_slash_contact_shows_and_tags_the_customer(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink), clock)
    await send(d.email.smtp.port, mail(body="Where is my order?"))
    await root_of(slack)
    url = events_url(d)

    async def run(text: str) -> str:
        status, body = await slack.command(url, text)
        assert status == 200
        return str(json.loads(body)["text"])

    assert await run("contact FD-1") == \
        "Contact 1: *Ada Lovelace* · no tags · email ada@example.org"
    assert await run("contact FD-1 tag VIP lang:de") == \
        "Contact 1 (changed): *Ada Lovelace* · `lang:de` `vip` · email ada@example.org"
    assert (await run("contact ada@example.org untag lang:de")).startswith(
        "Contact 1 (changed): *Ada Lovelace* · `vip`")
    assert (await run("contact 1 name Ada King")).startswith("Contact 1 (changed): *Ada King*")
    assert "is not a tag" in await run("contact FD-1 tag <!channel>")
    assert "no conversation FD-9" in await run("contact FD-9")
    assert "`tag`, `untag` or `name`" in await run("contact FD-1 delete")
    async with d.store.reader() as s:
        events = [(e.kind, e.actor) for e in (await s.execute(
            select(Event).where(Event.kind == "contact_changed").order_by(Event.id))).scalars()]
    assert len(events) == 3 and all(actor.startswith("Grace") for _, actor in events)


async def _saved_reply_posted(slack: FakeSlack, ts: str) -> bool:
    return any("your refund for FD-1" in m["text"] for m in slack.thread(ts))


# -- routing, metrics, robustness ------------------------------------------------------------------

async def test_routes_pick_the_channel_and_metrics_show_the_backlog(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    routes = [{"channel_id": "C0VIP", "contact_tags": ["vip"]},
              {"channel_id": "C0SMS", "customer_channels": ["sms", "whatsapp"]},
              {"channel_id": "C0BILLING", "keywords": ["refund", "invoice"]}]
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  slack_keys={"routes": routes}), clock)
    await send(d.email.smtp.port, mail())
    await root_of(slack, SUPPORT)
    async with d.store.session() as s:
        (await s.get_one(Contact, 1)).tags = {"vip": True}
    await send(d.email.smtp.port, mail(subject="Another thing", msgid="<v2@example.org>"))
    vip = await root_of(slack, "C0VIP")
    assert "FD-2" in vip["text"]
    await send(d.email.smtp.port, mail(frm="bob@example.net", subject="Invoice 77",
                                       body="Please send the invoice again",
                                       msgid="<b1@example.net>"), sender="bob@example.net")
    await root_of(slack, "C0BILLING")

    await slack.stop()  # Slack away: the posts wait in the outbox, by channel
    await send(d.email.smtp.port, mail(frm="cy@example.net", subject="Hi", body="hello",
                                       msgid="<c1@example.net>"), sender="cy@example.net")
    await eventually(lambda: processed(d.store))
    await d.outbox.deliver_due()
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{d.http.port}/metrics") as r:
        metrics = await r.text()
    backlog = {sample.labels["slack_channel"]: sample.value
               for family in text_string_to_metric_families(metrics)
               if family.name == "frontdesk_slack_backlog" for sample in family.samples}
    # cy's card waits (with, depending on timing, an update of an earlier card of that channel)
    assert backlog[SUPPORT] >= 1 and backlog["C0VIP"] == 0, backlog


async def test_rate_limit_waits_for_retry_after_then_delivers(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    slack.fail_next["chat.postMessage"] = [
        (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"})]
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    await eventually(lambda: _called(slack, "chat.postMessage", 1))
    await d.outbox.deliver_due()
    assert slack.roots() == []
    async with d.store.reader() as s:
        [row] = [r for r in (await s.execute(select(Outbox))).scalars()
                 if r.payload["op"] == "root"]
    assert row.state == "pending" and row.attempts == 0  # a wait, not a failure
    assert (row.next_attempt_at - clock()).total_seconds() == 30
    clock.advance(seconds=31)
    await d.outbox.deliver_due()
    assert len(slack.roots()) == 1


async def _called(slack: FakeSlack, method: str, n: int) -> bool:
    return len(slack.called(method)) >= n


async def test_posts_are_paced_per_channel(make_settings: Any, daemon_factory: Any, clock: Any,
                                           slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack,
                                                  slack_keys={"post_interval": "1s"}), clock)
    for i in range(3):
        await send(d.email.smtp.port, mail(subject=f"Matter {i}", msgid=f"<p{i}@example.org>"))
    await eventually(lambda: processed(d.store))
    await eventually(lambda: _rows(d, 3))
    await d.outbox.deliver_due()
    assert len(slack.roots()) == 1  # one a second in one channel
    clock.advance(seconds=1)
    await d.outbox.deliver_due()
    clock.advance(seconds=1)
    await d.outbox.deliver_due()
    assert [r["text"].split(" · ")[0] for r in slack.roots()] == ["FD-1", "FD-2", "FD-3"]
    async with d.store.reader() as s:
        assert {r.attempts for r in (await s.execute(select(Outbox))).scalars()} == {1}


async def _rows(d: Any, n: int) -> bool:
    return await _count(d, Outbox) >= n


async def test_slack_down_then_up_every_message_once_in_order(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    port = slack.port
    await slack.stop()
    await send(d.email.smtp.port, mail(body="one"))
    for n, prev in ((2, 1), (3, 2)):
        await send(d.email.smtp.port, mail(subject="Re: Order 1234 never arrived",
                                           body=["", "", "two", "three"][n],
                                           msgid=f"<m{n}@example.org>",
                                           In_Reply_To=f"<m{prev}@example.org>"))
    await eventually(lambda: processed(d.store))
    assert len(await conversations(d.store)) == 1  # the customer's mail was all accepted
    await eventually(lambda: _rows(d, 3))
    for _ in range(3):
        await d.outbox.deliver_due()
        clock.advance(seconds=3)
    await slack.start(port)
    for _ in range(4):
        clock.advance(seconds=3)
        await d.outbox.deliver_due()
    [root] = slack.roots()
    assert ">one" in _texts(root["blocks"])
    assert [m["text"].split("\n")[1] for m in slack.thread(root["ts"])] == [">two", ">three"]


async def test_a_root_posted_before_a_lost_answer_is_not_posted_twice(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    slack.lose_next_post = True
    d = await start(daemon_factory, desk_settings(make_settings, slack), clock)
    await send(d.email.smtp.port, mail())
    await eventually(lambda: _called(slack, "chat.postMessage", 1))
    await eventually(lambda: _attempts(d, 1))
    clock.advance(seconds=5)
    await d.outbox.deliver_due()
    assert len(slack.roots()) == 1 and len(slack.called("chat.postMessage")) == 1
    assert slack.called("conversations.history")[0].args["include_all_metadata"] in (True, "1",
                                                                                     "true")
    async with d.store.reader() as s:
        thread = await s.get_one(SlackThread, 1)
    assert thread.ts == slack.roots()[0]["ts"]


async def _attempts(d: Any, n: int) -> bool:
    async with d.store.reader() as s:
        rows = (await s.execute(select(Outbox))).scalars().all()
    return bool(rows) and rows[0].attempts >= n


async def test_socket_mode(make_settings: Any, daemon_factory: Any, clock: Any,
                           slack: FakeSlack, sink: SmtpSink) -> None:
    settings = desk_settings(make_settings, slack, sink,
                             slack_keys={"mode": "socket", "app_token": APP_TOKEN,
                                         "signing_secret": ""})
    d = await start(daemon_factory, settings, clock)
    assert slack.called("apps.connections.open")[0].token == APP_TOKEN
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{d.http.port}/readyz") as r:
            assert (await r.json())["checks"]["slack"] == "ok"
        async with session.post(events_url(d), data="{}") as r:
            assert r.status == 404  # no HTTP endpoint in Socket Mode
    await send(d.email.smtp.port, mail())
    root = await root_of(slack)
    envelope = await slack.push("events_api", FakeSlack.event_body(thread_message(
        SUPPORT, root["ts"], "Sent again today.", ts="1790000700.000001"), "Ev0SOCKET"))
    assert (await slack.wait_ack(envelope))["envelope_id"] == envelope
    await eventually(lambda: _sent(sink, 1))
    assert sink.parsed().get_content().strip() == "Sent again today."
    command = await slack.push("slash_commands", FakeSlack.command_form("resolve FD-1"))
    ack = await slack.wait_ack(command)
    assert ack["payload"]["text"] == "FD-1: Resolved."
    assert (await detail(d.store, 1))["status"] == "resolved"


async def test_readiness_waits_for_slack(make_settings: Any, daemon_factory: Any, clock: Any,
                                         slack: FakeSlack) -> None:
    settings = desk_settings(make_settings, slack)
    await slack.stop()
    d = await daemon_factory(settings, clock=clock)
    ready, checks = await d.readiness()
    assert not ready and checks["slack"] == "down"
    assert "slack desk disabled" not in " ".join(d.disabled)
