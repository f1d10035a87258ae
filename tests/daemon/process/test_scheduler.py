"""The scheduler end to end: mail in over real SMTP, acknowledgements, surveys and escalation mail
out to a real SMTP relay on loopback, Slack notices to the loopback fake of Slack, SMS to the
loopback fake of Twilio. The clock is a FakeClock the tests move; they call the sweep directly
(the daemon's own sweeps may run too: a sweep is idempotent)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.config.schema import EscalationLevel
from frontdesk.daemon.cli.main import main as cli
from frontdesk.domain.conversations import (
    add_staff_reply,
    get_conversation,
    resolve,
    set_priority,
    snooze,
)
from frontdesk.domain.report import build_report, format_report, report_csv
from frontdesk.storage.models import Contact, Event, Outbox
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.fakes.smtp_sink import SmtpSink
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio
from tests.support.helpers import FakeClock, detail, eventually, mail, processed, send

SUPPORT = "C0SUPPORT"
MANAGERS = "C0MANAGERS"
HOURS = "Mon-Fri 09:00-12:30,13:30-17:30"


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
async def sink() -> Any:
    async with SmtpSink() as s:
        yield s


@pytest.fixture
async def slack() -> Any:
    async with FakeSlack() as fake:
        yield fake


def scheduler_settings(make_settings: Any, sink: SmtpSink, *, database_url: str | None = None,
                       slack: FakeSlack | None = None, **sections: Any) -> Any:
    base: dict[str, Any] = {
        "scheduler": {"enabled": True, "interval": "1h"},
        "email": {"outbound": {"port": sink.port}},
    }
    if slack is not None:
        base["slack"] = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                         "channel_id": SUPPORT, "api_base_url": slack.base_url,
                         "post_interval": "0s"}
    levels = sections.pop("escalation", None)
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    settings = make_settings(database_url=database_url, **base)
    if levels is not None:  # a list: make_settings merges tables only
        settings = settings.model_copy(update={
            "escalation": [EscalationLevel.model_validate(level) for level in levels]})
    return settings


async def start(daemon_factory: Any, settings: Any, clock: FakeClock) -> Any:
    d = await daemon_factory(settings, clock=clock)
    await eventually(lambda: _ready(d))
    return d


async def _ready(d: Any) -> bool:
    return all(s.ready for s in d.services)


async def mail_in(d: Any, **kw: Any) -> None:
    await send(d.email.smtp.port, mail(**kw))
    await eventually(lambda: processed(d.store))
    await eventually(lambda: _journal_done(d))


async def _journal_done(d: Any) -> bool:
    from frontdesk.storage.models import InboundJournal

    async with d.store.reader() as s:
        return (await s.execute(select(func.count()).select_from(InboundJournal)
                                .where(InboundJournal.state == "pending"))).scalar_one() == 0


async def sweep(d: Any) -> dict[str, int]:
    done: dict[str, int] = await d.scheduler.sweep()
    await d.outbox.deliver_due()
    return done


async def events(d: Any, kind: str) -> list[Event]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Event).where(Event.kind == kind)
                                     .order_by(Event.id))).scalars())


async def staff_reply(d: Any, ref: int, text: str, clock: FakeClock) -> None:
    async with d.store.session() as s:
        c = await get_conversation(s, ref)
        await add_staff_reply(s, c, text, author="Grace", replies=d.replies, now=clock())


def sent_to(sink: SmtpSink, address: str) -> list[int]:
    return [i for i, (_f, rcpt, _d) in enumerate(sink.messages) if address in rcpt]


# -- acknowledgements ---------------------------------------------------------------------------

async def test_acknowledgement_once_with_the_honest_due_time(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    clock = FakeClock(at(2026, 11, 27, 18, 0))  # Friday evening
    settings = scheduler_settings(make_settings, sink, database_url=database_url,
                                  sla={"business_hours": HOURS, "timezone": "Europe/London"},
                                  email={"trusted_authserv_id": "mx.example.com"})
    d = await start(daemon_factory, settings, clock)
    # the mail server in front vouches for the sender: the acknowledgement may greet them by
    # name and repeat their subject (tests/daemon/process/test_backscatter.py: when it may not)
    await mail_in(d, Authentication_Results="mx.example.com; spf=pass "
                  "smtp.mailfrom=example.org; dkim=pass header.d=example.org; dmarc=pass")
    await sweep(d)
    await asyncio.gather(d.scheduler.sweep(), d.scheduler.sweep())  # still one
    await d.outbox.deliver_due()
    await eventually(lambda: _count_async(len(sink.messages) == 1))
    mail_from, rcpt, _ = sink.messages[0]
    assert (mail_from, rcpt) == ("<>", ["ada@example.org"])  # null return path
    sent = sink.parsed(0)
    assert sent["Auto-Submitted"] == "auto-replied"
    assert sent["Subject"] == "Re: Order 1234 never arrived [FD-1]"
    assert sent["In-Reply-To"] == "<m1@example.org>"
    assert sent["Reply-To"] == "support+FD-1@example.com"
    body = sent.get_content()
    assert "Hello Ada Lovelace," in body and "reference FD-1" in body
    assert "We're closed for the weekend; you'll hear from us by Monday 10:00." in body

    shown = await detail(d.store, 1)
    assert shown["first_response_due_at"] == "2026-11-30T10:00:00.000Z"
    assert shown["acknowledgement_due_at"] is None and shown["sla_policy"] == "default"
    [ack] = [m for m in shown["messages"] if m["direction"] == "out"]
    assert (ack["author"], ack["automated"], ack["delivery_status"]) == ("system", True, "sent")
    assert len(await events(d, "acknowledgement_sent")) == 1

    clock.advance(minutes=5)
    await mail_in(d, msgid="<m2@example.org>", body="One more thing",
                  In_Reply_To="<m1@example.org>")
    await sweep(d)
    assert len(sink.messages) == 1  # a second message of the conversation: no second one


async def _count_async(value: bool) -> bool:
    return value


async def test_no_acknowledgement_for_automated_mail(make_settings: Any, daemon_factory: Any,
                                                     sink: SmtpSink, clock: FakeClock) -> None:
    d = await start(daemon_factory, scheduler_settings(make_settings, sink), clock)
    await mail_in(d, frm="Ada <ada@example.org>", subject="Out of office",
                  Auto_Submitted="auto-replied")
    clock.advance(minutes=1)
    await sweep(d)
    assert sink.messages == []
    shown = await detail(d.store, 1)
    assert shown["messages"][0]["automated"] and shown["acknowledgement_due_at"] is None
    assert len(shown["messages"]) == 1


async def test_no_acknowledgement_when_staff_answered_first(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"delay": "5m"})
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    assert (await detail(d.store, 1))["acknowledgement_due_at"] == "2026-11-23T10:05:00.000Z"
    clock.advance(minutes=2)
    await staff_reply(d, 1, "Hello Ada, it is on its way.", clock)
    clock.advance(minutes=3)
    await sweep(d)
    await eventually(lambda: _count_async(len(sink.messages) == 1))
    assert sink.parsed(0).get_content().strip() == "Hello Ada, it is on its way."
    [skipped] = await events(d, "acknowledgement_skipped")
    assert skipped.data == {"reason": "staff already answered"}


async def test_rate_limit_per_recipient(make_settings: Any, daemon_factory: Any,
                                        sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink,
                                  acknowledgement={"rate_limits": ["2/10m", "3/1h"]})
    d = await start(daemon_factory, settings, clock)
    for n in range(4):
        await mail_in(d, subject=f"Question {n}", msgid=f"<q{n}@example.org>")
        await sweep(d)
        clock.advance(minutes=1)
    await mail_in(d, frm="Bob <bob@example.org>", subject="Mine", msgid="<b@example.org>")
    await sweep(d)
    await eventually(lambda: _count_async(len(sink.messages) == 3))
    assert len(sent_to(sink, "ada@example.org")) == 2 and len(sent_to(sink, "bob@example.org")) == 1
    reasons = [e.data["reason"] for e in await events(d, "acknowledgement_skipped")]
    assert reasons == ["the rate limit 2/10m for ada@example.org is reached",
                       "the rate limit 2/10m for ada@example.org is reached"]
    clock.advance(minutes=10)  # the 10-minute window has passed, the hourly one not yet
    await mail_in(d, subject="Question 5", msgid="<q5@example.org>")
    await sweep(d)
    await eventually(lambda: _count_async(len(sent_to(sink, "ada@example.org")) == 3))
    clock.advance(minutes=1)
    await mail_in(d, subject="Question 6", msgid="<q6@example.org>")
    await sweep(d)
    reasons = [e.data["reason"] for e in await events(d, "acknowledgement_skipped")]
    assert reasons[-1] == "the rate limit 3/1h for ada@example.org is reached"


async def test_sms_acknowledgement_and_none_to_an_opted_out_number(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink, clock: FakeClock) -> None:
    async with FakeTwilio() as fake:
        settings = scheduler_settings(
            make_settings, sink, http={"public_url": PUBLIC_URL},
            twilio={"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                    "sms_from": "+15550001111", "api_base_url": fake.base_url},
            sla={"business_hours": HOURS, "timezone": "Europe/London"},
            escalation=[{"after": "0s", "notify": [], "sms": "+15550002222"}])
        d = await start(daemon_factory, settings, clock)
        fake.daemon_port = d.http.port
        assert (await fake.post("/webhooks/twilio/sms", fake.inbound("Where is my order?")))[0] \
            == 200
        await eventually(lambda: processed(d.store))
        await eventually(lambda: _journal_done(d))
        await sweep(d)
        await eventually(lambda: _count_async(len(fake.messages) == 1))
        text = fake.messages[0]["Body"]
        assert text == "Thanks, we got your message (FD-1). You'll hear from us by 11:00 today."
        assert fake.messages[0]["To"] == "+15557654321"

        stranger = "+15550009999"
        await fake.post("/webhooks/twilio/sms", fake.inbound("STOP", sender=stranger))
        await fake.post("/webhooks/twilio/sms", fake.inbound("Hello?", sender=stranger))
        await eventually(lambda: _journal_done(d))
        await sweep(d)
        assert len(fake.messages) == 1
        [skipped] = await events(d, "acknowledgement_skipped")
        assert skipped.data == {"reason": f"{stranger} opted out of messages"}

        clock.now = at(2026, 11, 23, 11, 0)  # both are due: text the person on call
        await sweep(d)
        await eventually(lambda: _count_async(len(fake.messages) == 3))
        assert {m["To"] for m in fake.messages[1:]} == {"+15550002222"}
        assert sorted(m["Body"] for m in fake.messages[1:]) == [
            f"frontdesk escalation level 1: FD-{n} first response overdue "
            "(due Mon 23 Nov 11:00 GMT)." for n in (1, 2)]


# -- SLA due times --------------------------------------------------------------------------------

async def test_due_times_across_lunch_and_weekend(make_settings: Any, daemon_factory: Any,
                                                  sink: SmtpSink) -> None:
    clock = FakeClock(at(2026, 11, 23, 12, 0))  # Monday noon
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False},
                                  sla={"business_hours": HOURS, "timezone": "Europe/London",
                                       "resolution": "8h"})
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    shown = await detail(d.store, 1)
    assert shown["first_response_due_at"] == "2026-11-23T14:00:00.000Z"  # 30m, lunch, 30m
    assert shown["resolution_due_at"] == "2026-11-24T12:30:00.000Z"
    assert shown["escalation_due_at"] == "2026-11-23T13:45:00.000Z"  # the warning, 15m before
    clock.now = at(2026, 11, 27, 17, 0)  # Friday, half an hour before closing
    await mail_in(d, subject="Another", msgid="<m2@example.org>")
    second = await detail(d.store, 2)
    assert second["first_response_due_at"] == "2026-11-30T09:30:00.000Z"


async def test_clocks_pause_while_pending_and_snoozed(make_settings: Any, daemon_factory: Any,
                                                      sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False},
                                  sla={"resolution": "4h", "next_response": "30m"})
    d = await start(daemon_factory, settings, clock)  # business hours "always", UTC
    await mail_in(d)
    assert (await detail(d.store, 1))["resolution_due_at"] == "2026-11-23T14:00:00.000Z"
    clock.advance(minutes=30)
    await staff_reply(d, 1, "Could you send the order number?", clock)
    clock.advance(minutes=1)
    await sweep(d)
    shown = await detail(d.store, 1)
    assert shown["status"] == "pending" and shown["sla_paused"]
    assert shown["resolution_due_at"] is None and shown["next_response_due_at"] is None
    assert shown["sla_paused_seconds_left"] == {"resolution": 3 * 3600 + 30 * 60}
    assert shown["reminder_due_at"] == "2026-11-26T10:30:00.000Z"  # reminder.after = 3d

    clock.now = at(2026, 11, 23, 15, 0)
    await mail_in(d, msgid="<m2@example.org>", body="It is 1234.",
                  In_Reply_To="<m1@example.org>")
    shown = await detail(d.store, 1)
    assert shown["status"] == "open" and not shown["sla_paused"]
    assert shown["resolution_due_at"] == "2026-11-23T18:30:00.000Z"  # 3h30 left, from 15:00
    assert shown["next_response_due_at"] == "2026-11-23T15:30:00.000Z"
    assert shown["reminder_due_at"] is None

    clock.advance(minutes=10)
    async with d.store.session() as s:
        c = await get_conversation(s, 1)
        await snooze(s, c, clock() + timedelta(hours=2), actor="Grace", now=clock())
    clock.advance(minutes=1)
    await sweep(d)
    shown = await detail(d.store, 1)
    assert shown["sla_paused_seconds_left"] == {"response": 20 * 60,
                                                "resolution": 3 * 3600 + 20 * 60}
    assert shown["next_response_due_at"] is None and shown["escalation_due_at"] is None

    clock.now = at(2026, 11, 23, 17, 10)  # the snooze ends
    done = await sweep(d)
    assert done["wake"] == 1
    shown = await detail(d.store, 1)
    assert shown["status"] == "open" and not shown["sla_paused"]
    assert shown["next_response_due_at"] == "2026-11-23T17:30:00.000Z"
    [woken] = [e for e in await events(d, "conversation_reopened")
               if e.data.get("reason") == "snooze ended"]
    assert woken.actor == "scheduler"
    assert shown["escalation_due_at"] == "2026-11-23T17:15:00.000Z"  # the warning, 15m before


async def test_policies_by_tag_and_priority(make_settings: Any, daemon_factory: Any,
                                            sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False}, sla={
        "first_response": "4h", "policies": [
            {"name": "vip", "contact_tags": ["vip"], "first_response": "30m"},
            {"name": "urgent", "priorities": ["urgent"], "first_response": "15m"}]})
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    assert (await detail(d.store, 1))["first_response_due_at"] == "2026-11-23T14:00:00.000Z"
    clock.advance(minutes=5)
    async with d.store.session() as s:
        c = await get_conversation(s, 1)
        await set_priority(s, c, "urgent", actor="Grace", now=clock())
    clock.advance(seconds=1)
    await sweep(d)
    shown = await detail(d.store, 1)
    assert (shown["sla_policy"], shown["first_response_due_at"]) == \
        ("urgent", "2026-11-23T10:15:00.000Z")
    async with d.store.session() as s:
        contact = await s.get_one(Contact, 1)
        contact.tags = {"vip": True}
    await mail_in(d, subject="Another one", msgid="<m2@example.org>")
    second = await detail(d.store, 2)
    assert (second["sla_policy"], second["first_response_due_at"]) == \
        ("vip", "2026-11-23T10:35:01.000Z")


# -- escalations ----------------------------------------------------------------------------------

ESCALATION = [
    {"after": "0s", "mention": "S0ONCALL"},
    {"after": "30m", "channel_id": MANAGERS, "email": "oncall@example.com",
     "raise_priority": True},
]


async def _thread(slack: FakeSlack, n: int) -> list[str]:
    async def enough() -> list[str]:
        roots = slack.roots(SUPPORT)
        if not roots:
            return []
        texts = [m["text"] for m in slack.thread(roots[0]["ts"])]
        return texts if len(texts) >= n else []
    return await eventually(enough)


async def test_warning_then_levels_once_each(database_url: str, make_settings: Any,
                                             daemon_factory: Any, sink: SmtpSink,
                                             slack: FakeSlack, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, database_url=database_url, slack=slack,
                                  acknowledgement={"enabled": False}, escalation=ESCALATION)
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    clock.now = at(2026, 11, 23, 10, 44)
    assert "warning" not in await sweep(d)
    clock.now = at(2026, 11, 23, 10, 45)
    await asyncio.gather(d.scheduler.sweep(), d.scheduler.sweep())
    await sweep(d)
    assert (await _thread(slack, 1))[0].startswith(
        "SLA warning: the first response for FD-1 is due Mon 23 Nov 11:00 UTC (15m")
    clock.now = at(2026, 11, 23, 11, 0)
    await asyncio.gather(d.scheduler.sweep(), d.scheduler.sweep())
    await sweep(d)
    level1 = (await _thread(slack, 2))[1]
    assert level1.startswith("Escalation level 1: the first response for FD-1 was due")
    assert level1.endswith("<!subteam^S0ONCALL>")
    clock.now = at(2026, 11, 23, 11, 30)
    await sweep(d)
    await sweep(d)
    texts = await _thread(slack, 3)
    assert texts[2].startswith("Escalation level 2: the first response for FD-1 was due "
                               "Mon 23 Nov 11:00 UTC (30m of business time overdue)")
    [managers] = await eventually(lambda: _count_async(
        [m for m in slack.messages if m["channel"] == MANAGERS]))
    assert managers["text"].startswith("Escalation level 2: the first response for FD-1")
    assert "email conversation with Ada Lovelace: Order 1234 never arrived" in managers["text"]
    await eventually(lambda: _count_async(len(sent_to(sink, "oncall@example.com")) == 1))
    oncall = sink.parsed(sent_to(sink, "oncall@example.com")[0])
    assert oncall["Subject"] == "[FD-1] Escalation level 2: first response overdue"
    assert "frontdesk show FD-1" in oncall.get_content()

    clock.now = at(2026, 11, 23, 14, 0)
    await sweep(d)
    shown = await detail(d.store, 1)
    assert shown["priority"] == "high" and shown["escalation_level"] == 2
    assert shown["escalation_due_at"] is None
    assert [e.data["level"] for e in await events(d, "escalated")] == [1, 2]
    assert len(await events(d, "sla_warning")) == 1
    notices = [t for t in await _thread(slack, 3)
               if t.startswith(("SLA warning", "Escalation level"))]
    assert len(notices) == 3
    async with d.store.reader() as s:
        keys = list((await s.execute(select(Outbox.idempotency_key)
                                     .where(Outbox.idempotency_key.like("esc:%")))).scalars())
    assert sorted(k.rsplit(":", 1)[1] for k in keys) == \
        ["channel", "email", "slack", "slack", "slack"]


async def test_staff_answer_stops_the_chain(make_settings: Any, daemon_factory: Any,
                                            sink: SmtpSink, slack: FakeSlack,
                                            clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, slack=slack,
                                  acknowledgement={"enabled": False}, escalation=ESCALATION)
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    clock.now = at(2026, 11, 23, 10, 45)
    await sweep(d)
    clock.now = at(2026, 11, 23, 10, 50)
    await staff_reply(d, 1, "On it!", clock)
    clock.now = at(2026, 11, 23, 12, 0)
    await sweep(d)
    assert await events(d, "escalated") == []
    shown = await detail(d.store, 1)
    assert shown["escalation_due_at"] is None and shown["escalation_level"] == 0
    # The customer writes again: a new clock (next response), and its own chain.
    await mail_in(d, msgid="<m2@example.org>", body="Still nothing.",
                  In_Reply_To="<m1@example.org>")
    assert (await detail(d.store, 1))["next_response_due_at"] == "2026-11-23T13:00:00.000Z"
    clock.now = at(2026, 11, 23, 13, 0)
    await sweep(d)
    [escalated] = await events(d, "escalated")
    assert escalated.data["clock"] == "next_response" and escalated.data["level"] == 1


async def test_restart_between_due_time_and_sweep_fires_once(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False},
                                  escalation=[{"after": "0s", "notify": [],
                                               "email": "oncall@example.com"}])
    first = await start(daemon_factory, settings, clock)
    await mail_in(first)
    first.request_stop()
    await first.stop()
    clock.now = at(2026, 11, 23, 11, 5)
    second = await start(daemon_factory, settings, clock)  # its start sweeps at once
    await eventually(lambda: _escalations(second, 1))
    await sweep(second)
    await sweep(second)
    assert await _escalations(second, 1)
    await eventually(lambda: _count_async(len(sent_to(sink, "oncall@example.com")) == 1))
    await second.outbox.deliver_due()
    assert len(sent_to(sink, "oncall@example.com")) == 1


async def _escalations(d: Any, n: int) -> bool:
    return len(await events(d, "escalated")) == n


async def test_two_schedulers_on_one_store_fire_once(database_url: str, make_settings: Any,
                                                     daemon_factory: Any, sink: SmtpSink,
                                                     clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, database_url=database_url,
                                  acknowledgement={"enabled": False},
                                  escalation=[{"after": "0s", "email": "oncall@example.com"},
                                              {"after": "1h", "email": "boss@example.com"}])
    one = await start(daemon_factory, settings, clock)
    two = await start(daemon_factory, settings, clock)
    for n in range(5):
        await mail_in(one, subject=f"Order {n}", msgid=f"<o{n}@example.org>")
    for moment in (at(2026, 11, 23, 10, 45), at(2026, 11, 23, 11, 0), at(2026, 11, 23, 12, 0)):
        clock.now = moment
        await asyncio.gather(one.scheduler.sweep(), two.scheduler.sweep(),
                             one.scheduler.sweep(), two.scheduler.sweep())
    levels = sorted((e.conversation_id, e.data["level"]) for e in await events(one, "escalated"))
    assert levels == [(c, level) for c in range(1, 6) for level in (1, 2)]
    assert len(await events(one, "sla_warning")) == 5
    async with one.store.reader() as s:
        rows = (await s.execute(select(func.count()).select_from(Outbox)
                                .where(Outbox.idempotency_key.like("esc:%")))).scalar_one()
    assert rows == 10


# -- surveys, snoozes, reminders ------------------------------------------------------------------

async def test_survey_rating_and_low_score_reopens(database_url: str, make_settings: Any,
                                                   daemon_factory: Any, sink: SmtpSink,
                                                   slack: FakeSlack, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, database_url=database_url, slack=slack,
                                  acknowledgement={"enabled": False},
                                  survey={"delay": "1h", "low_score": 2})
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    await mail_in(d, frm="Bob <bob@example.org>", subject="Broken", msgid="<b1@example.org>")
    for ref in (1, 2):
        await staff_reply(d, ref, "Fixed, sorry about that.", clock)
    clock.advance(minutes=10)
    async with d.store.session() as s:
        for ref in (1, 2):
            await resolve(s, await get_conversation(s, ref), actor="Grace", now=clock())
    clock.advance(seconds=1)

    async def survey_planned() -> bool:
        await sweep(d)  # the background sweep may hold the rows (SKIP LOCKED): sweep again
        return (await detail(d.store, 1))["survey_due_at"] == "2026-11-23T11:10:00.000Z"

    await eventually(survey_planned, timeout=5)
    clock.now = at(2026, 11, 23, 11, 10)
    done = await sweep(d)
    assert done["survey"] == 2
    await eventually(lambda: _count_async(len(sink.messages) == 4))
    survey_to = {sink.messages[i][1][0]: sink.parsed(i) for i in range(2, 4)}
    ada = survey_to["ada@example.org"]
    assert ada["Subject"] == "How did we do? [FD-1]" and ada["Auto-Submitted"] == "auto-replied"
    assert "just a number from 1 (poor) to 5 (excellent)" in ada.get_content()
    assert (await detail(d.store, 1))["survey_sent_at"] == "2026-11-23T11:10:00.000Z"

    clock.advance(minutes=5)
    await mail_in(d, subject="Re: How did we do? [FD-1]", body="5", msgid="<r1@example.org>",
                  In_Reply_To=ada["Message-ID"])
    shown = await detail(d.store, 1)
    assert (shown["status"], shown["rating"]) == ("resolved", 5)
    assert shown["resolved_at"] == "2026-11-23T10:10:00.000Z"
    assert shown["messages"][-1]["text"].strip() == "5"
    assert [e for e in await events(d, "conversation_reopened") if e.conversation_id == 1] == []
    await sweep(d)  # no escalation, no second survey for a rating
    assert (await detail(d.store, 1))["next_response_due_at"] is None

    bob = survey_to["bob@example.org"]
    await mail_in(d, frm="Bob <bob@example.org>", subject="Re: survey", body="1",
                  msgid="<r2@example.org>", In_Reply_To=bob["Message-ID"])
    shown = await detail(d.store, 2)
    assert (shown["status"], shown["rating"]) == ("open", 1)
    assert shown["next_response_due_at"] == "2026-11-23T12:15:00.000Z"  # follow up within 1h
    [rated_low] = [e for e in await events(d, "rating_received") if e.conversation_id == 2]
    assert rated_low.data == {"rating": 1, "low": True, "reopened": True}

    async def rating_lines() -> list[str]:
        return [m["text"] for m in slack.messages if m["text"].startswith("Rating ")]
    lines = await eventually(lambda: _at_least(rating_lines, 2))
    assert sorted(lines) == ["Rating 1/5 from the customer: FD-2 is open again for a follow-up.",
                             "Rating 5/5 from the customer."]


async def _at_least(fetch: Any, n: int) -> Any:
    found = await fetch()
    return found if len(found) >= n else None


async def test_pending_conversation_gets_one_reminder(make_settings: Any, daemon_factory: Any,
                                                      sink: SmtpSink, clock: FakeClock) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False},
                                  reminder={"after": "2d"})
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)
    clock.advance(minutes=10)
    await staff_reply(d, 1, "Which size do you need?", clock)
    clock.advance(seconds=1)
    await sweep(d)
    assert (await detail(d.store, 1))["reminder_due_at"] == "2026-11-25T10:10:00.000Z"
    clock.advance(days=2)
    done = await sweep(d)
    assert done["reminder"] == 1
    clock.advance(days=2)
    assert "reminder" not in await sweep(d)
    await eventually(lambda: _count_async(len(sink.messages) == 2))
    reminder = sink.parsed(1)
    assert reminder["Subject"] == "Do you still need help? [FD-1]"
    shown = await detail(d.store, 1)
    assert shown["status"] == "pending" and shown["reminder_due_at"] is None
    assert [m["author"] for m in shown["messages"]] == ["customer", "staff", "system"]


# -- figures -------------------------------------------------------------------------------------

async def test_report_figures_and_csv(make_settings: Any, daemon_factory: Any, sink: SmtpSink,
                                      clock: FakeClock, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    settings = scheduler_settings(make_settings, sink, acknowledgement={"enabled": False},
                                  survey={"delay": "1s"},
                                  escalation=[{"after": "0s"}, {"after": "1h"}])
    d = await start(daemon_factory, settings, clock)
    await mail_in(d)  # FD-1: answered late (two levels), resolved, rated 4
    await mail_in(d, frm="Bob <bob@example.org>", subject="Hi", msgid="<b1@example.org>")
    clock.now = at(2026, 11, 23, 12, 0)
    await sweep(d)
    await staff_reply(d, 1, "Sorry for the wait.", clock)
    await staff_reply(d, 2, "Hello Bob.", clock)
    clock.now = at(2026, 11, 23, 14, 0)
    async with d.store.session() as s:
        for ref in (1, 2):
            await resolve(s, await get_conversation(s, ref), actor="Grace", now=clock())
    clock.advance(seconds=1)
    await sweep(d)
    clock.advance(seconds=1)
    await sweep(d)
    [first_survey] = [m for m in (await detail(d.store, 1))["messages"] if m["author"] == "system"]
    await mail_in(d, body="4", msgid="<r1@example.org>",
                  In_Reply_To=f"<{first_survey['external_id']}>")

    async with d.store.reader() as s:
        report = await build_report(s, since=timedelta(days=7), now=clock(),
                                    calendar=d.sla.calendar)
    overall = report["overall"]
    assert overall["conversations"] == 2 and overall["resolved"] == 2
    assert overall["resolution_seconds_median"] == 4 * 3600
    assert overall["escalations"] == 4 and overall["escalated"] == 2
    assert (overall["surveys_sent"], overall["ratings"]) == (2, 1)
    assert overall["csat_average"] == 4.0 and overall["csat_response_rate"] == 0.5
    assert overall["csat_satisfied_share"] == 1.0
    assert report["channels"]["email"]["escalations"] == 4
    assert "resolved in" in format_report(report)
    rows = report_csv(report).splitlines()
    assert rows[0].startswith("scope,since,until,conversations,")
    assert rows[1].startswith("email,") and rows[2].startswith("overall,")
    header = rows[0].split(",")
    values = dict(zip(header, rows[2].split(","), strict=True))
    assert values["csat_average"] == "4.0" and values["escalations"] == "4"

    config = tmp_path / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "{settings.database.url}"\n'
                      '[sla]\nbusiness_hours = "always"\n')
    assert await asyncio.to_thread(cli, ["report", "-c", str(config), "--since", "3650d",
                                         "--csv"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == rows[0] and printed[-1].startswith("overall,")
    assert await asyncio.to_thread(cli, ["show", "FD-1", "-c", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "SLA policy default" in shown and "rating 4/5" in shown


async def test_an_idle_scheduler_waits_for_work(make_settings: Any, daemon_factory: Any,
                                                sink: SmtpSink, clock: FakeClock) -> None:
    d = await start(daemon_factory, scheduler_settings(make_settings, sink), clock)
    await eventually(lambda: _count_async(_sweeps(d) >= 1))  # the start sweep
    before = _sweeps(d)
    assert await sweep(d) == {}
    await asyncio.sleep(0.3)  # nothing due anywhere: no sweep wakes another
    assert _sweeps(d) == before + 1
    await mail_in(d)  # a due acknowledgement wakes it at once
    await eventually(lambda: _count_async(len(sink.messages) == 1))


def _sweeps(d: Any) -> float:
    return d.metrics.registry.get_sample_value("frontdesk_scheduler_sweep_seconds_count") or 0.0


async def test_a_sweep_acknowledges_a_batch_with_one_flush(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """Twenty new customers: the sweep writes their twenty acknowledgements with one flush (a
    flush for each took a third of what acknowledging cost), and each still has its outbox row
    keyed by its own message, its acknowledgement record and its audit event; all twenty go
    out."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session as SyncSession

    from frontdesk.storage.models import Acknowledgement, Message

    clock = FakeClock(at(2026, 11, 27, 10, 0))
    settings = scheduler_settings(make_settings, sink, database_url=database_url,
                                  acknowledgement={"delay": "5m"})
    d = await start(daemon_factory, settings, clock)
    for i in range(20):
        await send(d.email.smtp.port, mail(frm=f"Customer {i} <c{i}@example.org>",
                                           subject=f"Matter {i}", msgid=f"<m{i}@example.org>"))
    await eventually(lambda: _journal_done(d))
    clock.advance(minutes=5)
    flushed: list[int] = []  # the acknowledgements each flush wrote

    def count(session: Any, _context: Any, _objects: Any) -> None:
        acks = [o for o in session.new if isinstance(o, Message) and o.author == "system"]
        if acks:
            flushed.append(len(acks))

    event.listen(SyncSession, "before_flush", count)
    try:
        done = await d.scheduler.sweep()
    finally:
        event.remove(SyncSession, "before_flush", count)
    assert done.get("acknowledgement") == 20, done
    assert flushed == [20]
    async with d.store.reader() as s:
        acks = (await s.execute(select(Message).where(Message.author == "system"))
                ).scalars().all()
        rows = {r.message_id: r for r in (await s.execute(
            select(Outbox).where(Outbox.kind == "deliver"))).scalars()}
        recorded = set((await s.execute(select(Acknowledgement.message_id))).scalars())
        audited = set((await s.execute(select(Event.message_id).where(
            Event.kind == "acknowledgement_sent"))).scalars())
    ids = {m.id for m in acks}
    assert len(ids) == 20 and set(rows) == ids == recorded == audited
    for m in acks:
        assert rows[m.id].idempotency_key == rows[m.id].payload["idempotency_key"] \
            == f"message-{m.id}"
        assert rows[m.id].payload["to_address"] == m.address
        assert rows[m.id].conversation_id == m.conversation_id
    while await d.outbox.deliver_due():
        pass
    assert sorted(rcpt[0] for _f, rcpt, _d in sink.messages) == sorted(
        f"c{i}@example.org" for i in range(20))


async def test_one_sweep_keeps_a_customers_rate_limit_among_its_own_acknowledgements(
        database_url: str, make_settings: Any, daemon_factory: Any, sink: SmtpSink) -> None:
    """Three new conversations of one customer due in the same sweep, with "2/10m": the third
    decision counts the two acknowledgements the sweep has just made (not flushed yet)."""
    clock = FakeClock(at(2026, 11, 27, 10, 0))
    settings = scheduler_settings(make_settings, sink, database_url=database_url,
                                  acknowledgement={"rate_limits": ["2/10m"], "delay": "5m"})
    d = await start(daemon_factory, settings, clock)
    for n in range(3):
        await send(d.email.smtp.port, mail(subject=f"Question {n}", msgid=f"<q{n}@example.org>"))
    await eventually(lambda: _journal_done(d))
    clock.advance(minutes=5)
    done = await sweep(d)
    assert done.get("acknowledgement") == 2, done
    await eventually(lambda: _count_async(len(sink.messages) == 2))
    reasons = [e.data["reason"] for e in await events(d, "acknowledgement_skipped")]
    assert reasons == ["the rate limit 2/10m for ada@example.org is reached"]


async def test_wakes_close_together_are_one_sweep_and_a_wake_after_quiet_sweeps_at_once(
        make_settings: Any, daemon_factory: Any, sink: SmtpSink, clock: FakeClock) -> None:
    """Each processing commit wakes the scheduler; while conversations keep coming, the wakes of
    one gap are one sweep (which then takes their conversations together), and a wake after a
    quiet spell is swept at once."""
    import time

    d = await start(daemon_factory, scheduler_settings(make_settings, sink), clock)
    d.scheduler.sweep_gap = 1.0  # wide, so that a loaded machine cannot blur the gap
    began: list[float] = []
    real = d.scheduler.sweep

    async def counted() -> dict[str, int]:
        began.append(time.monotonic())
        return await real()

    d.scheduler.sweep = counted  # type: ignore[method-assign]
    await asyncio.sleep(1.1)  # quiet for longer than the gap (start-up swept once)
    began.clear()
    woken = time.monotonic()
    d.scheduler.wake()
    await eventually(lambda: _count_async(len(began) == 1))
    assert began[0] - woken < 0.5  # at once, not after the gap
    for _ in range(10):
        d.scheduler.wake()
        await asyncio.sleep(0.01)
    await eventually(lambda: _count_async(len(began) == 2), timeout=5)
    await asyncio.sleep(0.3)
    assert len(began) == 2  # ten wakes, one sweep
    assert began[1] - began[0] >= 0.95
