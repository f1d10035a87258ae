"""CC in the Slack desk: the card shows who replies copy, ``/frontdesk cc`` shows and changes it
(audited, said in the thread), and a reply from the thread goes to the customer and the copied
people; real SMTP in and out, the loopback fake of Slack; SQLite and (when named) PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from frontdesk.storage.models import Event
from tests.daemon.desk.test_slack_desk import (
    SUPPORT,
    desk_settings,
    events_url,
    root_of,
    start,
)
from tests.fakes.slack import FakeSlack, thread_message
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import detail, eventually, mail, processed, send


def _texts(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


async def _card_shows(slack: FakeSlack, ts: str, *texts: str) -> bool:
    current = slack.find(SUPPORT, ts)
    return current is not None and all(t in _texts(current["blocks"]) for t in texts)


async def _said_in_thread(slack: FakeSlack, ts: str, text: str) -> bool:
    return any(text in m["text"] for m in slack.thread(ts))


async def _sent(sink: SmtpSink, n: int) -> bool:
    return len(sink.messages) >= n


async def test_slash_cc_shows_removes_and_adds_and_the_reply_follows(
        database_url: str, make_settings: Any, daemon_factory: Any, clock: Any,
        slack: FakeSlack, sink: SmtpSink) -> None:
    d = await start(daemon_factory, desk_settings(make_settings, slack, sink,
                                                  database_url=database_url), clock)
    await send(d.email.smtp.port, mail(Cc="Bob <bob@example.org>, t&c@example.org"))
    root = await root_of(slack)
    assert "CC: bob@example.org, t&amp;c@example.org" in _texts(root["blocks"])
    url = events_url(d)

    async def run(text: str) -> str:
        status, body = await slack.command(url, text)
        assert status == 200
        answer = json.loads(body)
        assert answer["response_type"] == "ephemeral"
        return str(answer["text"])

    assert "`cc FD-12`" in await run("help")
    assert await run("cc FD-1") == "FD-1: CC: bob@example.org, t&amp;c@example.org."
    # Slack sends a typed address as a mailto link (should_escape): read as the address.
    assert await run("cc FD-1 -<mailto:bob@example.org|bob@example.org> +carol@example.org") \
        == ("FD-1: CC added carol@example.org; removed bob@example.org "
            "(now t&amp;c@example.org, carol@example.org).")
    assert await run("cc FD-1 -bob@example.org") == \
        "FD-1 unchanged (CC: t&amp;c@example.org, carol@example.org)."
    said = ":information_source: CC added carol@example.org; removed bob@example.org"
    await eventually(lambda: _said_in_thread(slack, root["ts"], said))
    await eventually(lambda: _card_shows(slack, root["ts"],
                                         "CC: t&amp;c@example.org, carol@example.org"))
    assert "bob@example.org" not in _texts(slack.find(SUPPORT, root["ts"])["blocks"])
    shown = await run("show FD-1")
    assert "\nCC: t&amp;c@example.org, carol@example.org\n" in shown

    warning = await run("cc FD-1 +ada@example.org")
    assert warning.startswith(":warning: ada@example.org is the customer's own address")
    hostile = await run("cc FD-1 +<!channel>")
    assert hostile.startswith(":warning: ") and "is not an email address" in hostile
    assert "<!channel>" not in hostile
    assert await run("cc FD-9") == ":warning: no conversation FD-9"
    async with d.store.reader() as s:
        changes = [(e.actor, e.data["added"], e.data["removed"], e.data.get("slack_user"))
                   for e in (await s.execute(select(Event).where(Event.kind == "cc_changed")
                                             .order_by(Event.id))).scalars()]
    assert changes[0][:3] == ("customer", ["bob@example.org", "t&c@example.org"], [])
    assert changes[1][:3] == ("Grace Hopper <grace@example.com>", ["carol@example.org"],
                              ["bob@example.org"])
    assert len(changes) == 2

    # A reply in the thread: to the customer, copied to the list as it is now.
    await slack.event(url, thread_message(SUPPORT, root["ts"], "Hello all, it is on its way.",
                                          ts="1790000500.000001"))
    await eventually(lambda: _sent(sink, 1))
    _from, rcpt, _ = sink.messages[0]
    assert rcpt == ["ada@example.org", "t&c@example.org", "carol@example.org"]
    sent = sink.parsed(0)
    assert str(sent["To"]) == "Ada Lovelace <ada@example.org>"
    assert str(sent["Cc"]) == "t&c@example.org, carol@example.org"

    # Ada answers everyone, still copying bob: he stays removed.
    await send(d.email.smtp.port, mail(msgid="<m2@example.org>", body="Thanks!",
                                       subject="Re: Order 1234 never arrived [FD-1]",
                                       In_Reply_To=sent["Message-ID"],
                                       Cc="bob@example.org, carol@example.org"))
    await eventually(lambda: processed(d.store))
    await eventually(lambda: _messages(d, 3))
    assert (await detail(d.store, 1))["cc"] == ["t&c@example.org", "carol@example.org"]


async def _messages(d: Any, n: int) -> bool:
    return len((await detail(d.store, 1))["messages"]) >= n
