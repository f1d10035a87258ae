"""Contacts staff logged (phone, in person, letter) against a running daemon: through the
daemon's Intake (what the REST API calls), the Slack form and ``frontdesk log``. Acknowledged by
mail to the address given, timed, carded in Slack; replies by email, else SMS, else kept as a
note with the call-back line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from frontdesk.channels.logged.contact import LoggedContact, problems
from frontdesk.channels.logged.parse import LOGGED_BY
from frontdesk.daemon.cli.main import main
from frontdesk.domain.conversations import CALL_BACK, add_staff_reply, get_conversation
from frontdesk.domain.replies import REPLY_VIA
from frontdesk.storage.models import Event, InboundJournal, Message
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack, thread_message
from tests.fakes.smtp_sink import SmtpSink
from tests.fakes.twilio import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, FakeTwilio
from tests.support.helpers import conversations, detail, eventually, mail, processed, send

SUPPORT = "C0SUPPORT"
OURS = "+15550001111"
CUSTOMER = "+15557654321"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


def contact(**fields: Any) -> LoggedContact:
    data: dict[str, Any] = {
        "channel": "phone", "external_id": "call-1",
        "contact": {"name": "Ada Lovelace", "email": "Ada@Example.org", "phone": None},
        "subject": "Order 1234 never arrived", "text": "Called: order 1234 is two weeks late.",
        "author": "Grace Hopper"}
    data.update(fields)
    return LoggedContact.model_validate(data)


def settings(make_settings: Any, *, database_url: str | None = None,
             sink: SmtpSink | None = None, slack: FakeSlack | None = None,
             twilio: FakeTwilio | None = None, scheduler: bool = False) -> Any:
    sections: dict[str, Any] = {}
    if sink is not None:
        sections["email"] = {"outbound": {"port": sink.port}}
    if slack is not None:
        sections["slack"] = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                             "channel_id": SUPPORT, "api_base_url": slack.base_url,
                             "post_interval": "0s"}
    if twilio is not None:
        sections["twilio"] = {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
                              "sms_from": OURS, "api_base_url": twilio.base_url}
        sections["http"] = {"public_url": PUBLIC_URL}
    if scheduler:
        sections["scheduler"] = {"enabled": True, "interval": "1s"}
        sections["acknowledgement"] = {"delay": "0s"}
    return make_settings(database_url=database_url, **sections)


async def start(daemon_factory: Any, settings: Any, clock: Any) -> Any:
    d = await daemon_factory(settings, clock=clock)

    async def ready() -> bool:
        return all(s.ready for s in d.services)

    await eventually(ready)
    return d


async def count(d: Any, model: Any, *where: Any) -> int:
    async with d.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(model).where(*where)))
                   .scalar_one())


async def reply(d: Any, clock: Any, reference: str, text: str) -> Message:
    async with d.store.session() as s:
        m = await add_staff_reply(s, await get_conversation(s, reference), text,
                                  author="Grace Hopper", replies=d.replies, now=clock())
    d.outbox.kick()
    return m


def mails_to(sink: SmtpSink, address: str) -> list[Any]:
    return [sink.parsed(i) for i, (_f, rcpt, _d) in enumerate(sink.messages) if address in rcpt]


def root_of(slack: FakeSlack) -> dict[str, Any] | None:
    roots = slack.roots(SUPPORT)
    return roots[0] if roots else None


# -- through the Intake ---------------------------------------------------------------------------

async def test_a_phone_contact_is_a_conversation_acknowledged_by_mail_and_carded_in_slack(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        sink: SmtpSink, slack: FakeSlack) -> None:
    d = await start(daemon_factory, settings(make_settings, database_url=database_url, sink=sink,
                                             slack=slack, scheduler=True), clock)
    ok, checks = await d.readiness()
    assert ok and "logged" not in checks and "intake" not in checks  # nothing to wait for
    reference, created = await d.intake.record(contact())
    assert (reference, created) == ("FD-1", True)
    shown = await detail(d.store, reference)
    assert shown["channel"] == "phone" and shown["subject"] == "Order 1234 never arrived"
    assert shown["first_response_due_at"] == "2026-11-23T11:00:00.000Z"  # the SLA: 1h
    assert shown["contact"]["identities"] == [{"channel": "email", "address": "ada@example.org"}]
    [first] = [m for m in shown["messages"] if m["direction"] == "in"]  # (the ack may be there)
    assert (first["direction"], first["author_name"], first["text"]) == \
        ("in", "Ada Lovelace", "Called: order 1234 is two weeks late.")
    async with d.store.reader() as s:
        stored = (await s.execute(select(Message).where(Message.direction == "in"))
                  ).scalars().one()
        logged = (await s.execute(select(Event).where(Event.kind == "contact_logged"))
                  ).scalars().one()
    assert stored.headers[LOGGED_BY] == "Grace Hopper" and stored.headers[REPLY_VIA] == "email"
    assert logged.actor == "Grace Hopper" and logged.conversation_id == 1

    # the same external id again (on any logged channel): the same reference, stored once
    assert await d.intake.record(contact(text="again")) == ("FD-1", False)
    assert await d.intake.record(contact(channel="letter")) == ("FD-1", False)
    assert await count(d, InboundJournal) == 1
    assert await count(d, Message, Message.direction == "in") == 1

    async def acknowledged() -> list[Any]:
        return mails_to(sink, "ada@example.org")

    acks = await eventually(acknowledged, timeout=15)
    assert len(acks) == 1, [(str(m["Subject"]), m.get_content()[:200]) for m in acks]
    [ack] = acks
    assert "FD-1" in str(ack["Subject"]) and "FD-1" in ack.get_content()
    root = await eventually(lambda: _async(root_of(slack)))
    shown_root = json.dumps(root["blocks"])
    assert "FD-1" in shown_root and "Phone call" in shown_root and "ada@example.org" in shown_root


async def _async(value: Any) -> Any:
    return value


async def test_replies_go_by_email_and_an_answer_by_mail_joins_the_conversation(
        make_settings: Any, daemon_factory: Any, clock: Any, sink: SmtpSink) -> None:
    d = await start(daemon_factory, settings(make_settings, sink=sink), clock)
    await send(d.email.smtp.port, mail(subject="Earlier", body="an earlier mail"))
    await eventually(lambda: processed(d.store))
    reference, _ = await d.intake.record(
        contact(contact={"name": "Ada", "email": "ada@example.org", "phone": "+44 20 7946 0958"}))
    assert reference == "FD-2"
    both = await conversations(d.store)
    assert len({c.contact_id for c in both}) == 1  # found by the email address given
    sent = await reply(d, clock, reference, "A new parcel goes out today.")
    assert (sent.channel, sent.address) == ("email", "ada@example.org")

    async def replied() -> list[Any]:
        return [m for m in mails_to(sink, "ada@example.org") if "new parcel" in m.get_content()]

    [out] = await eventually(replied)
    assert reference in str(out["Subject"])
    answer = mail(subject=f"Re: {out['Subject']}", body="Thank you!", msgid="<m9@example.org>")
    answer["In-Reply-To"] = out["Message-ID"]
    await send(d.email.smtp.port, answer)

    async def joined() -> bool:
        return any(m["text"].startswith("Thank you!")
                   for m in (await detail(d.store, reference))["messages"])

    await eventually(joined)


async def test_a_phone_number_alone_finds_the_sms_contact_and_replies_go_by_sms(
        make_settings: Any, daemon_factory: Any, clock: Any, twilio: FakeTwilio) -> None:
    d = await start(daemon_factory, settings(make_settings, twilio=twilio), clock)
    twilio.daemon_port = d.http.port
    status, _ = await twilio.post("/webhooks/twilio/sms", twilio.inbound("Hi", sender=CUSTOMER))
    assert status == 200
    await eventually(lambda: processed(d.store))
    national = CUSTOMER[2:5] + " " + CUSTOMER[5:8] + "-" + CUSTOMER[8:]
    reference, _ = await d.intake.record(contact(
        external_id="call-2", contact={"name": "Bob", "phone": f"+1 {national}"}))
    both = await conversations(d.store)
    assert [c.channel for c in both] == ["sms", "phone"]
    assert both[0].contact_id == both[1].contact_id  # one contact, found by the number
    sent = await reply(d, clock, reference, "We call you tomorrow.")
    assert (sent.channel, sent.address) == ("sms", CUSTOMER)

    async def texted() -> list[dict[str, str]]:
        return [m for m in twilio.messages if m["Body"] == "We call you tomorrow."]

    [out] = await eventually(texted)
    assert out["To"] == CUSTOMER and out["From"] == OURS


async def test_with_no_address_a_reply_is_kept_as_a_note_and_slack_says_to_call_back(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any, sink: SmtpSink,
        slack: FakeSlack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = await start(daemon_factory, settings(make_settings, database_url=database_url, sink=sink,
                                             slack=slack, scheduler=True), clock)
    reference, _ = await d.intake.record(contact(
        channel="in_person", external_id="visit 7 (desk)", contact={"name": "Carl"}))
    shown = await detail(d.store, reference)
    assert shown["channel"] == "in_person" and shown["first_response_due_at"] is not None
    root = await eventually(lambda: _async(root_of(slack)))
    # the acknowledgement cannot go anywhere: it fails at once, saying so in the thread
    failed = await eventually(lambda: _async(
        [m for m in slack.thread(root["ts"]) if "called back" in m["text"]]))
    assert "could not be delivered" in failed[0]["text"]
    note = await reply(d, clock, reference, "We will have the part on Monday.")
    assert note.is_note and note.failure_reason == CALL_BACK and note.address == ""
    async with d.store.reader() as s:
        event = (await s.execute(select(Event).where(Event.kind == "callback_needed"))
                 ).scalars().one()
    assert event.actor == "Grace Hopper" and event.message_id == note.id

    async def call_back_line() -> list[dict[str, Any]]:
        return [m for m in slack.thread(root["ts"]) if ":telephone_receiver:" in m["text"]]

    [line] = await eventually(call_back_line)
    assert "must be called back" in line["text"] and "Grace Hopper" in line["text"]
    # a reply typed in the thread: the same
    url = f"http://127.0.0.1:{d.http.port}/slack/events"
    status, _ = await slack.event(url, thread_message(SUPPORT, root["ts"], "Sorry!",
                                                      ts="1790000700.000001"))
    assert status == 200

    async def two_lines() -> bool:
        return len(await call_back_line()) == 2

    await eventually(two_lines)
    await asyncio.sleep(0.3)
    assert sink.messages == []  # nothing was mailed
    messages = (await detail(d.store, reference))["messages"]
    assert [(m["note"], m.get("failure_reason")) for m in messages if m["author"] == "staff"] \
        == [(True, CALL_BACK)] * 2
    # `frontdesk show` says it too
    config = _config(tmp_path, d)
    assert await asyncio.to_thread(main, ["show", reference, "-c", str(config)]) == 0
    assert "must be called back" in capsys.readouterr().out


# -- Slack: /frontdesk log -----------------------------------------------------------------------

async def test_the_slack_form_logs_a_contact_with_the_slack_user_as_author(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack) -> None:
    d = await start(daemon_factory, settings(make_settings, slack=slack), clock)
    url = f"http://127.0.0.1:{d.http.port}/slack/events"
    status, text = await slack.command(url, "log letter")
    assert status == 200 and not text.strip().strip('"{}')
    [view] = slack.views
    assert view["trigger_id"] == "1337.42.abcd" and view["private_metadata"] == "letter"
    assert [b["block_id"] for b in view["blocks"]] == ["name", "email", "phone", "subject",
                                                       "text"]
    status, body = await slack.submit(url, view, {"name": "Dora", "email": "not-an-address",
                                                  "phone": "020 7946 0958", "text": " "})
    answer = json.loads(body)
    assert status == 200 and answer["response_action"] == "errors"
    assert set(answer["errors"]) == {"email", "phone", "text"}
    assert "country code" in answer["errors"]["phone"]
    assert await count(d, InboundJournal) == 0
    values = {"name": "Dora", "email": "dora@example.org", "subject": "", "text":
              "Her letter: the warranty card is missing."}
    status, body = await slack.submit(url, view, values)
    answer = json.loads(body)
    assert status == 200 and answer["response_action"] == "update"
    assert "Logged as *FD-1*" in json.dumps(answer["view"])
    shown = await detail(d.store, "FD-1")
    assert shown["channel"] == "letter" and shown["subject"].startswith("Her letter")
    async with d.store.reader() as s:
        stored = (await s.execute(select(Message))).scalars().one()
    assert stored.headers[LOGGED_BY] == "Grace Hopper"
    _, body = await slack.submit(url, view, values)  # sent twice: logged once
    assert "logged already, as *FD-1*" in json.dumps(json.loads(body)["view"])
    assert await count(d, Message) == 1
    _, text = await slack.command(url, "log")
    assert "log phone" in text


# -- the command line ----------------------------------------------------------------------------

def _config(tmp_path: Path, d: Any) -> Path:
    path = tmp_path / "frontdesk.toml"
    path.write_text(f'[database]\nurl = "{d.settings.database.url}"\n'
                    f'[daemon]\ndata_dir = "{d.settings.daemon.data_dir}"\n'
                    '[email]\ninbox_addresses = ["support@example.com"]\n')
    return path


async def test_frontdesk_log_waits_for_the_daemon_and_prints_the_reference(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    d = await start(daemon_factory, settings(make_settings, database_url=database_url), clock)
    config = str(_config(tmp_path, d))
    argv = ["log", "in-person", "--name", "Eve", "--phone", "+44 20 7946 0958", "--as", "Grace",
            "--external-id", "visit-1", "-c", config, "She wants a refund."]
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out.strip() == "logged as FD-1 (external id visit-1)"
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out.strip() == "already logged as FD-1 (external id visit-1)"
    shown = await detail(d.store, "FD-1")
    assert shown["channel"] == "in_person"
    assert shown["contact"]["identities"] == [{"channel": "sms", "address": "+442079460958"}]
    assert await asyncio.to_thread(main, ["log", "phone", "-c", config, "--json", "Hi"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"] == "FD-2" and out["created"] and out["external_id"].startswith("cli-")


async def test_frontdesk_log_without_a_daemon_journals_it_for_later(
        make_settings: Any, daemon_factory: Any, clock: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    s = settings(make_settings)
    config = tmp_path / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "{s.database.url}"\n'
                      f'[daemon]\ndata_dir = "{s.daemon.data_dir}"\n')
    argv = ["log", "letter", "--email", "fay@example.org", "--wait", "0.2", "-c", str(config),
            "A letter about the invoice."]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "journaled" in out and "when the frontdesk daemon runs" in out
    d = await start(daemon_factory, s, clock)  # and then the daemon makes it a conversation
    await eventually(lambda: processed(d.store))
    assert (await detail(d.store, 1))["channel"] == "letter"


@pytest.mark.parametrize(("argv", "words"), [
    (["--email", "nope"], "--email: 'nope' is not an email address"),
    (["--phone", "020 7946 0958"], "--phone: '020 7946 0958' has no country code"),
    (["--phone", "+1 12"], "--phone: '+1 12' is not a phone number"),
])
def test_frontdesk_log_refuses_bad_input_in_words(
        argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "phone", *argv, "-c", str(tmp_path / "absent.toml"), "Hello"]) == 1
    assert words in capsys.readouterr().err


# -- the request body ----------------------------------------------------------------------------

def test_bad_input_gives_clear_errors() -> None:
    with pytest.raises(ValidationError) as bad:
        contact(contact={"email": "ada@", "phone": "07946 0958"}, text="  \n ", author="")
    assert problems(bad.value) == {
        "email": "'ada@' is not an email address (like ada@example.org)",
        "phone": "'07946 0958' has no country code: give the number in international form, "
                 "like +442079460958",
        "text": "the text is empty: write what the customer said",
        "author": "is empty"}
    with pytest.raises(ValidationError) as bad:
        LoggedContact.model_validate({"channel": "fax", "external_id": "", "text": "x" * 10_001,
                                      "author": "G", "extra": 1})
    assert set(problems(bad.value)) == {"channel", "external_id", "text", "extra"}
    ok = contact(contact={"name": " Ada ", "email": " ", "phone": "0044 20 7946 0958"})
    assert (ok.contact.name, ok.contact.email, ok.contact.phone) == \
        ("Ada", None, "+442079460958")
    schema = LoggedContact.model_json_schema()
    assert schema["properties"]["text"]["maxLength"] == 10_000
    assert all(p.get("description") for p in schema["properties"].values())


async def test_the_watch_for_logged_rows_does_not_read_through_a_backlog(tmp_path: Path) -> None:
    """On SQLite the daemon looks every second for rows ``frontdesk log`` journaled from another
    process. Under a flood of webhooks thousands of other rows are pending; the look must cost
    the same with 20,000 of them as with 20 (it once walked back through every pending row)."""
    import sqlite3

    from frontdesk.channels.logged.intake import newest_logged
    from frontdesk.storage.db import Store

    path = tmp_path / "w.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.ensure_schema()
    await store.dispose()
    statement = newest_logged(0).compile(dialect=store.engine.dialect,
                                         compile_kwargs={"literal_binds": True})
    conn = sqlite3.connect(path)

    def journal(channel: str, first: int, count: int) -> None:
        conn.executemany(
            "INSERT INTO inbound_journal (channel, remote_id, raw, meta, received_at, state, "
            "attempts) VALUES (?, ?, x'7b7d', '{}', '2026-12-07 10:00:00.000000', 'pending', 0)",
            [(channel, f"{channel}-{i}") for i in range(first, first + count)])
        conn.commit()

    def steps() -> tuple[int | None, int]:
        count = [0]

        def tick() -> int:
            count[0] += 1
            return 0

        conn.set_progress_handler(tick, 10)
        try:
            newest = conn.execute(str(statement)).fetchone()[0]
        finally:
            conn.set_progress_handler(None, 10)
        return newest, count[0]

    try:
        journal("phone", 0, 3)
        journal("meta", 0, 20)
        newest_small, few = steps()
        journal("meta", 20, 20_000)
        newest_large, many = steps()
    finally:
        conn.close()
    assert newest_small == newest_large == 3  # the third phone row, whatever follows it
    assert many <= few + 2, (few, many)
