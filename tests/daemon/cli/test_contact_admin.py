"""``frontdesk contact tag|export|erase`` against a running daemon (CONTRACT.md, "Command line,
continued"): tags that the next conversation's SLA policy and Slack route pick up, the export
as one JSON document, and a GDPR erasure that reaches the SQLite files, the attachment folder
and the bot's copies in Slack threads while ``report --json`` still counts the conversations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.storage.models import Contact, Event, Outbox, SlackThread
from tests.fakes.slack import BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.support.helpers import (
    cli_config,
    conversations,
    detail,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)

NAME = "Philomena Drinkwater"
ADDRESS = "philomena.drinkwater@example.org"
BODY = "My membership number is PX-99182-QUOKKA, please cancel it."
ATTACHMENT = b"Drinkwater signed cancellation form, confidential. " * 30
SUPPORT, VIP = "C0SUPPORT", "C0VIP"


@pytest.fixture
async def slack() -> Any:
    async with FakeSlack() as fake:
        yield fake


def _settings(make_settings: Any, slack: FakeSlack | None = None, **sections: Any) -> Any:
    if slack is not None:
        sections["slack"] = {"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                             "channel_id": SUPPORT, "api_base_url": slack.base_url,
                             "post_interval": "0s",
                             "routes": [{"channel_id": VIP, "contact_tags": ["vip"]}]}
    return make_settings(
        scheduler={"enabled": True}, acknowledgement={"enabled": False},
        sla={"first_response": "4h",
             "policies": [{"name": "vip", "contact_tags": ["vip"], "first_response": "30m"}]},
        **sections)


async def _mail_in(d: Any, n: int, **kw: Any) -> None:
    message = mail(frm=f"{NAME} <{ADDRESS}>", **kw)
    message.add_attachment(ATTACHMENT, maintype="application", subtype="pdf",
                           filename="drinkwater-cancellation.pdf")
    await send(d.email.smtp.port, message, sender=ADDRESS)

    async def done() -> bool:
        return await processed(d.store) and len(await conversations(d.store)) >= n

    await eventually(done)


async def _ready(d: Any) -> bool:
    return all(s.ready for s in d.services)


async def test_contact_tags_feed_the_next_conversations_policy_and_route(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = await daemon_factory(_settings(make_settings, slack), clock=clock)
    await eventually(lambda: _ready(d))
    await _mail_in(d, 1, msgid="<p1@example.org>")
    assert (await detail(d.store, 1))["sla_policy"] == "default"
    cfg = cli_config(d, tmp_path)

    code, out, err = await run_cli(capsys, "contact", "tag", ADDRESS, "VIP", "lang:de",
                                   "--as", "Grace", "-c", cfg)
    assert (code, out, err) == (0, "contact 1: lang:de vip\n", "")
    await _mail_in(d, 2, subject="Another thing", msgid="<p2@example.org>")
    second = await detail(d.store, 2)
    assert (second["sla_policy"], second["first_response_due_at"]) == \
        ("vip", "2026-11-23T10:30:00.000Z")

    async def routed() -> list[dict[str, Any]]:
        return slack.roots(VIP)

    [root] = await eventually(routed)
    assert "FD-2" in root["text"]
    async with d.store.reader() as s:
        [audit] = (await s.execute(select(Event).where(Event.kind == "contact_changed")))\
            .scalars().all()
    assert audit.actor == "Grace" and audit.data["added"] == ["vip"]

    code, out, err = await run_cli(capsys, "contact", "tag", "1", "vip", "--remove", "--json",
                                   "-c", cfg)
    assert code == 0, err
    assert json.loads(out) == {"id": 1, "tags": ["lang:de"]}
    for bad in ("Not A Tag", "lang:klingon", "language"):
        code, out, err = await run_cli(capsys, "contact", "tag", "1", "ok", bad, "-c", cfg)
        assert code == 1 and out == "" and "Traceback" not in err
        assert repr(bad.strip().lower()) in err or repr(bad) in err, err
    code, out, _ = await run_cli(capsys, "contact", "tag", "1", "lang:fr", "-c", cfg)
    assert out == "contact 1: lang:fr\n"  # one language; the refusals changed nothing
    code, _, err = await run_cli(capsys, "contact", "tag", "nobody@example.org", "vip",
                                 "-c", cfg)
    assert code == 1 and "no contact has the address nobody@example.org" in err


async def test_export_and_erase_from_the_command_line(
        make_settings: Any, daemon_factory: Any, clock: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    d = await daemon_factory(_settings(make_settings), clock=clock)
    await _mail_in(d, 1, subject="Cancel my Drinkwater membership", body=BODY,
                   msgid="<x1@example.org>")
    await send(d.email.smtp.port, mail(frm="bob@example.net", subject="Kettle",
                                       msgid="<b1@example.net>"), sender="bob@example.net")
    await eventually(lambda: _count_conversations(d, 2))
    cfg = cli_config(d, tmp_path)
    code, out, _ = await run_cli(capsys, "reply", "FD-1", f"Dear {NAME}, cancelled.", "-c", cfg)
    assert code == 0

    code, out, err = await run_cli(capsys, "contact", "export", ADDRESS, "-c", cfg)
    assert code == 0, err
    exported = json.loads(out)
    assert exported["contact"]["name"] == NAME
    assert [i["address"] for i in exported["identities"]] == [ADDRESS]
    [conversation] = exported["conversations"]
    texts = [m["text"] for m in conversation["messages"]]
    assert BODY in texts[0] and f"Dear {NAME}, cancelled." in texts
    [attachment] = conversation["messages"][0]["attachments"]
    assert attachment["filename"] == "drinkwater-cancellation.pdf"
    assert attachment["size"] == len(ATTACHMENT)

    db = Path(d.store.sqlite_path)
    data = Path(d.settings.daemon.data_dir)
    needles = [NAME.encode(), ADDRESS.encode(), b"PX-99182-QUOKKA", b"quokka",
               b"Drinkwater signed cancellation form", b"drinkwater-cancellation"]

    def on_disk() -> set[bytes]:
        blobs = [p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()]
        blobs += [p.read_bytes() for p in data.rglob("*") if p.is_file()]
        return {n for n in needles if any(n in b for b in blobs)}

    assert on_disk() == set(needles)
    code, out, _ = await run_cli(capsys, "report", "--json", "--since", "3650d", "-c", cfg)
    before = json.loads(out)["overall"]

    code, out, err = await run_cli(capsys, "contact", "erase", ADDRESS, "-c", cfg)
    assert code == 1 and out == "" and "--confirm" in err and "nothing was changed" in err
    assert on_disk() == set(needles)
    code, out, err = await run_cli(capsys, "contact", "erase", ADDRESS, "--confirm", "--as",
                                   "DPO Dana", "-c", cfg)
    assert code == 0, err
    assert out.startswith("contact 1 erased: 1 identities, 2 messages in 1 conversations, "
                          "1 attachments (1 files deleted)")
    assert on_disk() == set()
    assert not (data / "attachments").exists() or \
        not [p for p in (data / "attachments").rglob("*") if p.is_file()]

    code, out, _ = await run_cli(capsys, "report", "--json", "--since", "3650d", "-c", cfg)
    after = json.loads(out)["overall"]
    assert after["conversations"] == before["conversations"] == 2
    assert (after["messages_in"], after["messages_out"]) == \
        (before["messages_in"], before["messages_out"])
    code, out, err = await run_cli(capsys, "contact", "export", "1", "-c", cfg)
    assert (code, out) == (1, "") and "no contact 1" in err
    code, out, err = await run_cli(capsys, "contact", "erase", "1", "--confirm", "-c", cfg)
    assert code == 1 and "no contact 1" in err
    code, out, err = await run_cli(capsys, "contact", "export", "bob@example.net", "-c", cfg)
    assert code == 0 and json.loads(out)["contact"]["name"] == ""  # bob gave no name
    async with d.store.reader() as s:
        [audit] = (await s.execute(select(Event).where(Event.kind == "contact_erased")))\
            .scalars().all()
    assert audit.actor == "DPO Dana"
    assert audit.data["counts"]["messages"] == 2
    shown = json.dumps(audit.data)
    assert NAME not in shown and ADDRESS not in shown


async def _count_conversations(d: Any, n: int) -> bool:
    return await processed(d.store) and len(await conversations(d.store)) >= n


async def test_erasure_deletes_the_bots_copies_in_slack(
        make_settings: Any, daemon_factory: Any, clock: Any, slack: FakeSlack,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = await daemon_factory(_settings(make_settings, slack), clock=clock)
    await eventually(lambda: _ready(d))
    await _mail_in(d, 1, body=BODY, msgid="<s1@example.org>")
    await _mail_in(d, 1, subject="Re: Order 1234 never arrived", body="Any news, PX-99182?",
                   msgid="<s2@example.org>", In_Reply_To="<s1@example.org>")

    async def posted() -> list[dict[str, Any]]:  # the mails' files uploaded, the second's line
        roots = slack.roots(SUPPORT)
        return roots if roots and len(slack.thread(roots[0]["ts"])) >= 3 else []

    [root] = await eventually(posted)
    # A staff member's own message in the thread: the bot cannot delete it and does not try.
    staff = {"type": "message", "channel": SUPPORT, "ts": "1790000999.000001",
             "thread_ts": root["ts"], "text": "On it", "user": "U0GRACE", "reactions": []}
    slack.messages.append(staff)
    bot_posts = [m["ts"] for m in slack.messages
                 if m.get("bot_id") and m["channel"] == SUPPORT]
    assert len(bot_posts) >= 2 and any("PX-99182" in m["text"] for m in slack.thread(root["ts"]))

    cfg = cli_config(d, tmp_path)
    code, _, err = await run_cli(capsys, "contact", "erase", "1", "--confirm", "-c", cfg)
    assert code == 0, err
    clock.now = datetime.now(UTC) + timedelta(seconds=1)  # the command line's clock is real
    d.outbox.kick()

    async def gone() -> bool:
        return not [m for m in slack.messages if m.get("bot_id") and m["channel"] == SUPPORT]

    await eventually(gone)
    assert sorted(m["ts"] for m in slack.deleted) == sorted(bot_posts)
    assert slack.deleted[-1]["ts"] == root["ts"]  # the root last
    # the mails' files the desk uploaded into the thread are deleted too, not only their posts
    assert sorted(slack.files_deleted) == sorted(f["id"] for u in slack.shared
                                                 for f in u["files"])
    assert len(slack.files_deleted) == 2
    assert staff in slack.messages
    assert not [c for c in slack.called("chat.delete") if c.args.get("ts") == staff["ts"]]
    async with d.store.reader() as s:
        threads = (await s.execute(select(func.count()).select_from(SlackThread)))\
            .scalar_one()
        [row] = (await s.execute(select(Outbox).where(
            Outbox.idempotency_key.like("slack-erase-%")))).scalars().all()
        earlier = (await s.execute(select(Outbox).where(
            Outbox.kind == "slack", Outbox.id != row.id))).scalars().all()
        contact = await s.get_one(Contact, 1)
    assert threads == 0 and contact.name == ""
    assert (row.state, row.payload["op"], row.payload["ts"]) == ("done", "erase", root["ts"])
    # The earlier posts' rows keep nothing of the person: retried by hand they delete nothing.
    assert earlier and all(r.payload == {"op": "erase", "slack_channel": SUPPORT,
                                         "target": SUPPORT, "erased": True} for r in earlier)
