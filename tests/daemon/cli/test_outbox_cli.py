"""`frontdesk outbox`, `outbox retry` and `outbox cancel` against a running daemon whose relay
(a real SMTP server on loopback) refuses, then works again: what is waiting and why, sending it
now, giving one up; on SQLite and, where named, PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.storage.models import Event, Message, Outbox
from tests.fakes.smtp_sink import SmtpSink
from tests.support.helpers import (
    cli_config,
    detail,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)

RELAY_DOWN = "421 4.3.2 the relay is restarting"


@pytest.fixture
async def relay() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as sink:
        yield sink


@pytest.fixture
async def daemon(database_url: str, make_settings: Any, daemon_factory: Any,
                 relay: SmtpSink) -> Any:
    """A daemon on the real clock whose relay is ``relay``; failed sends wait an hour."""
    settings = make_settings(
        database_url=database_url, email={"outbound": {"port": relay.port}},
        daemon={"outbox_retry_initial": "1h", "outbox_retry_max": "4h",
                "outbox_max_attempts": 5, "outbox_poll": "1s"})
    d = await daemon_factory(settings)
    await send(d.email.smtp.port, mail(msgid="<o1@example.org>"))
    await eventually(lambda: processed(d.store))
    return d


@pytest.fixture
def cfg(daemon: Any, tmp_path: Any, relay: SmtpSink) -> str:
    """A config file for the command line, naming the daemon's store and relay."""
    return cli_config(daemon, tmp_path, relay_port=relay.port)




async def _reply(capsys: pytest.CaptureFixture[str], cfg: str, text: str) -> int:
    code, out, err = await run_cli(capsys, "reply", "FD-1", text, "--as", "Grace", "-c", cfg)
    assert code == 0, err
    return int(out.split("#")[1].split()[0])  # "queued reply #7 to ..."


async def _row_of(d: Any, message_id: int) -> Outbox:
    async with d.store.reader() as s:
        return (await s.execute(select(Outbox).where(Outbox.message_id == message_id))
                ).scalars().one()


async def _tried(d: Any, message_id: int, attempts: int) -> bool:
    return (await _row_of(d, message_id)).attempts >= attempts


async def _status(d: Any, message_id: int) -> str | None:
    async with d.store.reader() as s:
        return (await s.get_one(Message, message_id)).delivery_status


async def _is(d: Any, message_id: int, status: str) -> bool:
    return await _status(d, message_id) == status


async def _events(d: Any, kind: str) -> list[Event]:
    async with d.store.reader() as s:
        return list((await s.execute(select(Event).where(Event.kind == kind))).scalars())


async def test_the_list_shows_what_waits_and_why_and_changes_nothing(
        daemon: Any, cfg: str, relay: SmtpSink, capsys: pytest.CaptureFixture[str]) -> None:
    relay.fail_with, relay.fail_at = RELAY_DOWN, "MAIL"
    first = await _reply(capsys, cfg, "We are looking into it.")
    await eventually(lambda: _tried(daemon, first, 1))
    second = await _reply(capsys, cfg, "Found it.")  # waits behind the first, never tried
    row = await _row_of(daemon, first)
    async with daemon.store.reader() as s:
        events_before = (await s.execute(select(func.count()).select_from(Event))).scalar_one()

    code, out, err = await run_cli(capsys, "outbox", "-c", cfg)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"#{row.id} ") and "pending" in lines[0]
    assert "deliver" in lines[0] and "email" in lines[0] and "FD-1" in lines[0]
    assert "ada@example.org" in lines[0] and "attempts 1, next try 20" in lines[0]
    assert lines[1].strip().startswith("the relay") or "421" in lines[1]
    assert "attempts 0, due now" in lines[2]

    code, out, err = await run_cli(capsys, "outbox", "--json", "-c", cfg)
    assert code == 0, err
    items = json.loads(out)  # exactly one JSON document
    assert [i["message_id"] for i in items] == [first, second]
    item = items[0]
    assert {k: item[k] for k in ("kind", "channel", "conversation", "target", "state",
                                 "attempts")} == {
        "kind": "deliver", "channel": "email", "conversation": "FD-1",
        "target": "ada@example.org", "state": "pending", "attempts": 1}
    assert "421" in item["last_error"] and item["next_attempt_at"] > item["created_at"]

    code, out, err = await run_cli(capsys, "outbox", "--json", "--limit", "1", "-c", cfg)
    assert [i["message_id"] for i in json.loads(out)] == [second]
    assert "the newest 1 of 2" in err

    code, out, _ = await run_cli(capsys, "outbox", "--failed", "-c", cfg)
    assert code == 0 and out.strip() == "nothing has failed"
    # Reading changed nothing: the row, its backoff, the audit.
    again = await _row_of(daemon, first)
    assert (again.attempts, again.next_attempt_at, again.state) == (
        row.attempts, row.next_attempt_at, row.state)
    async with daemon.store.reader() as s:
        assert (await s.execute(select(func.count()).select_from(Event))).scalar_one() \
            == events_before


async def test_retry_sends_now_instead_of_after_the_backoff(
        daemon: Any, cfg: str, relay: SmtpSink, capsys: pytest.CaptureFixture[str]) -> None:
    relay.fail_with, relay.fail_at = RELAY_DOWN, "MAIL"
    waiting = await _reply(capsys, cfg, "Sorry for the wait.")
    await eventually(lambda: _tried(daemon, waiting, 1))
    row = await _row_of(daemon, waiting)
    relay.fail_with = None  # fixed; the row would wait out the rest of its hour

    code, out, err = await run_cli(capsys, "outbox", "retry", str(row.id), "-c", cfg)
    assert code == 0, err
    assert out.strip() == f"outbox #{row.id} is due now; the daemon sends it at its next look"
    began = time.monotonic()
    await eventually(lambda: _is(daemon, waiting, "sent"), timeout=10)
    assert time.monotonic() - began < 5  # the next poll (1s), or at once through NOTIFY
    assert relay.parsed().get_content().strip() == "Sorry for the wait."

    # A reply refused for good is queued again once the cause is fixed.
    relay.fail_with, relay.fail_at = "550 5.7.1 relaying denied", "RCPT"
    refused = await _reply(capsys, cfg, "Here is your invoice.")
    await eventually(lambda: _is(daemon, refused, "failed"))
    code, out, _ = await run_cli(capsys, "outbox", "--failed", "-c", cfg)
    assert "failed" in out and "relaying denied" in out
    relay.fail_with = None
    code, out, err = await run_cli(capsys, "outbox", "retry", "--all", "--as", "Grace", "-c", cfg)
    assert code == 0, err
    assert out.strip() == "1 failed row(s) queued again, attempts reset"
    await eventually(lambda: _is(daemon, refused, "sent"), timeout=10)
    shown = (await detail(daemon.store, 1))["messages"][-1]
    assert shown["delivery_status"] == "sent" and "failure_reason" not in shown
    assert (await _row_of(daemon, refused)).attempts == 1  # reset, then the one that worked
    [by_id, by_all] = await _events(daemon, "outbox_retried")  # both in the audit
    assert by_id.conversation_id == 1 and by_all.actor == "Grace"


async def test_cancel_gives_up_and_shows_who_did_it(
        daemon: Any, cfg: str, relay: SmtpSink, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    relay.fail_with, relay.fail_at = RELAY_DOWN, "MAIL"
    wrong = await _reply(capsys, cfg, "Your refund is on its way.")  # it is not
    await eventually(lambda: _tried(daemon, wrong, 1))
    second = await _reply(capsys, cfg, "Please ignore my last mail.")
    row = await _row_of(daemon, wrong)

    code, out, err = await run_cli(capsys, "outbox", "cancel", str(row.id), "--as", "Grace",
                               "-c", cfg)
    assert code == 0, err
    assert out.strip() == (f"outbox #{row.id} (deliver email to ada@example.org on FD-1) "
                           "cancelled: it will not be sent")
    code, out, _ = await run_cli(capsys, "show", "FD-1", "-c", cfg)
    assert "[failed]" in out and "failed: cancelled by Grace" in out
    shown = json.loads((await run_cli(capsys, "show", "FD-1", "--json", "-c", cfg))[1])
    [cancelled] = [m for m in shown["messages"] if m["id"] == wrong]
    assert cancelled["delivery_status"] == "failed"
    assert cancelled["failure_reason"] == "cancelled by Grace"
    [event] = await _events(daemon, "outbox_cancelled")
    assert event.actor == "Grace" and event.conversation_id == 1 and event.message_id == wrong
    code, out, _ = await run_cli(capsys, "outbox", "--failed", "--json", "-c", cfg)
    assert [(i["id"], i["last_error"]) for i in json.loads(out)] == [
        (row.id, "cancelled by Grace")]

    # The next reply of the conversation no longer waits behind it; it is tried, and waits.
    await eventually(lambda: _tried(daemon, second, 1))
    monkeypatch.setenv("USER", "lin")
    code, _, err = await run_cli(capsys, "outbox", "cancel",
                             str((await _row_of(daemon, second)).id), "-c", cfg)
    assert code == 0, err
    assert await _status(daemon, second) == "failed"
    assert (await detail(daemon.store, 1))["messages"][-1]["failure_reason"] == "cancelled by lin"

    # Neither goes out when the relay is back, nor does `retry --all` bring them back.
    relay.fail_with = None
    code, out, _ = await run_cli(capsys, "outbox", "retry", "--all", "-c", cfg)
    assert code == 0 and out.strip() == "nothing is queued or failed"
    third = await _reply(capsys, cfg, "All sorted now.")
    await eventually(lambda: _is(daemon, third, "sent"))
    assert [relay.parsed(i).get_content().strip() for i in range(len(relay.messages))] == [
        "All sorted now."]

    code, _, err = await run_cli(capsys, "outbox", "cancel", str(row.id), "-c", cfg)
    assert code == 1 and err.strip() == (
        f"frontdesk: outbox #{row.id} has already failed: cancelled by Grace")


async def test_unknown_ids_and_usage_errors(daemon: Any, cfg: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("retry", "cancel"):
        code, out, err = await run_cli(capsys, "outbox", action, "999", "-c", cfg)
        assert (code, out) == (1, "")
        assert err.strip() == "frontdesk: no outbox row #999 (`frontdesk outbox` lists them)"
    for args in (["outbox", "retry"], ["outbox", "retry", "3", "--all"], ["outbox", "cancel"],
                 ["outbox", "cancel", "abc"], ["outbox", "--since", "1d"],
                 ["outbox", "flush"]):
        code, out, err = await run_cli(capsys, *args, "-c", cfg)
        assert code == 2, (args, err)
        assert out == "" and "Traceback" not in err
