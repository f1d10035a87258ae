"""The IMAP mailbox reader against a real Dovecot on loopback (tests/support/dovecot.py).

Mail is put into the user's Maildir as an MDA would; the daemon reads it over IMAP (implicit
TLS, STARTTLS or plain) into the real store, and the tests look at both sides: the
conversations in the store and the flags and folders Dovecot reports.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import func, select

from frontdesk.storage.models import ChannelCheckpoint, InboundJournal, Message
from tests.support.helpers import conversations, detail, eventually
from tests.support.imap import imap_settings, raw_mail, reader


async def stored(daemon: Any) -> int:
    async with daemon.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(Message)
                                    .where(Message.direction == "in"))).scalar_one())


async def journal_rows(daemon: Any) -> int:
    async with daemon.store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(InboundJournal)))
                   .scalar_one())


async def count_is(daemon: Any, n: int) -> bool:
    return await stored(daemon) == n and await journal_rows(daemon) == n


def metric(daemon: Any, name: str) -> float:
    for line in daemon.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def ready(daemon: Any) -> bool:
    ok, checks = await daemon.readiness()
    return ok and checks.get("imap") == "ok"


async def test_tls_reads_the_mailbox_flags_seen_and_checkpoints(
        dovecot: Any, database_url: str, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(1, 4)])
    d = await daemon_factory(imap_settings(make_settings, dovecot, box,
                                           database_url=database_url))
    await eventually(lambda: count_is(d, 3))
    convs = await conversations(d.store)
    assert sorted(c.subject for c in convs) == ["Question 1", "Question 2", "Question 3"]
    first = await detail(d.store, convs[0].id)
    assert first["channel"] == "email"
    assert first["contact"]["identities"] == [{"channel": "email", "address": "ada@example.org"}]
    assert first["messages"][0]["text"].startswith("Message number")
    await eventually(lambda: _flags_are(box, ["\\Seen"] * 3))
    async with d.store.reader() as s:
        [cp] = (await s.execute(select(ChannelCheckpoint))).scalars().all()
    assert cp.name == f"imap:{box.user}@127.0.0.1/INBOX"
    assert cp.value == {"uidvalidity": box.status()["uidvalidity"], "last_uid": 3}
    assert await ready(d)
    metrics = d.metrics.render().decode()
    assert "frontdesk_imap_connected 1.0" in metrics
    assert "frontdesk_imap_fetched_total 3.0" in metrics


async def _flags_are(box: Any, expected: list[str]) -> bool:
    flags = await asyncio.to_thread(box.flags)
    return [" ".join(sorted(f.replace("\\Recent", "").split())) for f in flags] == expected


async def test_new_mail_arrives_through_idle_within_seconds(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    # Polling once a minute: only IDLE can bring the mail in within the 8 s allowed here.
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, poll_interval="60s"))
    await eventually(lambda: ready(d))
    await asyncio.sleep(0.3)  # let the reader enter IDLE after its first (empty) search
    box.deliver(raw_mail(1, subject="Arrived while idle"))
    await eventually(lambda: count_is(d, 1), timeout=8)
    [conv] = await conversations(d.store)
    assert conv.subject == "Arrived while idle"
    assert reader(d).sessions == 1


async def test_polling_when_idle_is_off(dovecot: Any, make_settings: Any,
                                        daemon_factory: Any) -> None:
    box = dovecot.add_user()
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, idle=False,
                                           poll_interval="1s"))
    await eventually(lambda: ready(d))
    box.deliver(raw_mail(1))
    await eventually(lambda: count_is(d, 1), timeout=8)
    box.deliver(raw_mail(2))
    await eventually(lambda: count_is(d, 2), timeout=8)
    assert reader(d).sessions == 1


async def test_plain_connection_to_a_local_server(dovecot: Any, make_settings: Any,
                                                  daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver(raw_mail(1))
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, port=dovecot.imap_port,
                                           tls=False, ca_file=""))
    await eventually(lambda: count_is(d, 1))


async def test_starttls_upgrades_the_plain_connection(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver(raw_mail(1))
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, port=dovecot.imap_port,
                                           tls=False, starttls="required"))
    await eventually(lambda: count_is(d, 1))
    assert "TLS" in await asyncio.to_thread(_login_line, dovecot, box.user)


def _login_line(dovecot: Any, user: str) -> str:
    """Dovecot's log line of the user's last login ("TLS" or "secured" in it tells how)."""
    lines = [line for line in dovecot.log_text().splitlines()
             if "Login:" in line and f"user=<{user}>" in line]
    return lines[-1] if lines else ""


async def test_certificate_from_an_unknown_ca_is_refused(
        dovecot: Any, make_settings: Any, daemon_factory: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    box = dovecot.add_user()
    box.deliver(raw_mail(1))
    caplog.set_level(logging.WARNING, logger="frontdesk.channels.email.imap")
    d = await daemon_factory(imap_settings(make_settings, dovecot, box,
                                           ca_file=str(dovecot.other_ca_file)))
    await eventually(lambda: _logged(caplog, "certificate could not be verified"))
    assert not await ready(d)
    assert await journal_rows(d) == 0
    assert "frontdesk_imap_connected 0.0" in d.metrics.render().decode()
    assert _login_line(dovecot, box.user) == ""  # the password was never sent
    assert box.password not in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


async def test_verification_switched_off_is_logged(
        dovecot: Any, make_settings: Any, daemon_factory: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    box = dovecot.add_user()
    box.deliver(raw_mail(1))
    caplog.set_level(logging.WARNING, logger="frontdesk.channels.email.imap")
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, ca_file="",
                                           verify_tls=False))
    await eventually(lambda: count_is(d, 1))
    assert any("verify_tls is false" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


async def test_starttls_required_but_not_offered_never_logs_in(
        make_settings: Any, daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    said: list[bytes] = []

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK IMAP4rev1 Service Ready\r\n")
        await writer.drain()
        while line := await reader.readline():
            said.append(line)
            tag, _, command = line.decode().strip().partition(" ")
            if command.upper() == "CAPABILITY":
                writer.write(f"* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n".encode())
            else:
                writer.write(f"{tag} BAD not here\r\n".encode())
            await writer.drain()

    srv = await asyncio.start_server(server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    caplog.set_level(logging.WARNING, logger="frontdesk.channels.email.imap")
    try:
        settings = make_settings(email={"imap": {
            "host": "127.0.0.1", "port": port, "tls": False, "starttls": "required",
            "username": "support", "password": "secret", "reconnect_initial": "1s"}})
        d = await daemon_factory(settings)
        await eventually(lambda: _logged(caplog, "does not offer STARTTLS"))
        assert not await ready(d)
        assert not any(b"LOGIN" in line.upper() or b"secret" in line for line in said)
    finally:
        srv.close()


async def test_restart_in_the_middle_of_a_500_message_backlog(
        dovecot: Any, database_url: str, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(500)])
    settings = imap_settings(make_settings, dovecot, box, database_url=database_url,
                             fetch_batch=25)
    first = await daemon_factory(settings)
    imap = reader(first)
    read = imap._journal
    stopping: list[asyncio.Task[None]] = []

    async def stop_after_four_batches(mails: list[tuple[int, bytes]]) -> None:
        await read(mails)
        if imap._last_uid >= 75 and not stopping:  # the 4th batch of 25 is being committed
            first.request_stop()
            stopping.append(asyncio.create_task(first.stop()))

    imap._journal = stop_after_four_batches
    await eventually(lambda: _has(stopping), timeout=30)
    await stopping[0]
    in_first = await journal_rows(first)
    assert 100 <= in_first < 500
    second = await daemon_factory(settings)
    await eventually(lambda: count_is(second, 500), timeout=60)
    async with second.store.reader() as s:
        distinct = (await s.execute(select(func.count(func.distinct(Message.external_id)))))\
            .scalar_one()
    assert distinct == 500
    assert reader(second)._last_uid == 500
    await eventually(lambda: _unseen(box, 0))


async def _has(items: list[Any]) -> bool:
    return bool(items)


async def _unseen(box: Any, n: int) -> bool:
    return (await asyncio.to_thread(box.status))["unseen"] == n


async def test_changed_uidvalidity_resyncs_without_duplicates(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.make_folder("Support")
    box.deliver_many([raw_mail(n) for n in range(3)], folder="Support")
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, folder="Support"))
    await eventually(lambda: count_is(d, 3))
    before = box.status("Support")["uidvalidity"]
    # The folder is deleted and restored from a backup with two more messages: new UIDVALIDITY,
    # UIDs starting at 1 again.
    box.delete_folder("Support")
    box.create_folder("Support")
    box.deliver_many([raw_mail(n) for n in range(5)], folder="Support")
    assert box.status("Support")["uidvalidity"] != before
    await eventually(lambda: count_is(d, 5), timeout=20)
    await eventually(lambda: _checkpoint_is(d, box.status("Support")["uidvalidity"], 5))
    assert await count_is(d, 5)


async def _checkpoint_is(daemon: Any, validity: int, last: int) -> bool:
    async with daemon.store.reader() as s:
        cps = (await s.execute(select(ChannelCheckpoint))).scalars().all()
    return [cp.value for cp in cps] == [{"uidvalidity": validity, "last_uid": last}]


async def test_processed_mail_is_moved_to_the_configured_folder(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(3)])
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, move_to="Processed"))
    await eventually(lambda: count_is(d, 3))
    await eventually(lambda: _messages_in(box, "INBOX", 0))
    assert box.status("Processed")["messages"] == 3


async def test_a_minimal_server_is_polled_and_mail_moved_by_copy_and_expunge(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user(bare=True)  # IMAP4rev1 only: no IDLE, no MOVE, no UIDPLUS
    box.deliver_many([raw_mail(n) for n in range(2)])
    box.create_folder("Done")
    d = await daemon_factory(imap_settings(make_settings, dovecot, box, move_to="Done",
                                           poll_interval="1s"))
    await eventually(lambda: count_is(d, 2))
    await eventually(lambda: _messages_in(box, "INBOX", 0))
    assert box.status("Done")["messages"] == 2
    box.deliver(raw_mail(2))  # found by polling
    await eventually(lambda: count_is(d, 3), timeout=8)
    await eventually(lambda: _messages_in(box, "Done", 3))
    assert reader(d).sessions == 1


async def _messages_in(box: Any, folder: str, n: int) -> bool:
    try:
        return (await asyncio.to_thread(box.status, folder))["messages"] == n
    except RuntimeError:
        return False


async def test_a_killed_connection_reconnects_and_goes_on(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver(raw_mail(1))
    d = await daemon_factory(imap_settings(make_settings, dovecot, box))
    await eventually(lambda: count_is(d, 1))
    await eventually(lambda: ready(d))
    assert box.kick()
    await eventually(lambda: _sessions(d, 2), timeout=15)
    box.deliver(raw_mail(2))
    await eventually(lambda: count_is(d, 2), timeout=10)
    assert metric(d, "frontdesk_imap_reconnects_total") >= 1


async def _sessions(daemon: Any, n: int) -> bool:
    return reader(daemon).sessions >= n and await ready(daemon)


async def test_a_server_restart_loses_and_duplicates_nothing(
        dovecot: Any, make_settings: Any, daemon_factory: Any) -> None:
    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(3)])
    d = await daemon_factory(imap_settings(make_settings, dovecot, box))
    await eventually(lambda: count_is(d, 3))
    await asyncio.to_thread(dovecot.stop)
    try:
        await eventually(lambda: _not_ready(d), timeout=10)
        box.deliver_many([raw_mail(n) for n in range(3, 6)])  # mail arrives while it is down
    finally:
        await asyncio.to_thread(dovecot.start)
    await eventually(lambda: count_is(d, 6), timeout=20)
    assert await ready(d)


async def _not_ready(daemon: Any) -> bool:
    return not await ready(daemon)


async def test_a_2000_message_backlog_is_read_in_batches(
        dovecot: Any, make_settings: Any, tmp_path: Any, clock: Any) -> None:
    """The reader and the journal alone (no processor competing for the store), so this
    measures reading: every message journaled once, 100 UIDs per FETCH."""
    from frontdesk.channels.email.imap import ImapChannel, ImapMetrics
    from frontdesk.daemon.process.journal import Journal
    from frontdesk.daemon.process.metrics import Metrics
    from frontdesk.storage.checkpoints import Checkpoints
    from frontdesk.storage.db import Store

    box = dovecot.add_user()
    box.deliver_many([raw_mail(n) for n in range(2000)])
    settings = imap_settings(make_settings, dovecot, box, fetch_batch=100)
    store = Store(settings.database.url)
    await store.ensure_schema()
    metrics = Metrics()
    journal = Journal(store, clock=clock, metrics=metrics)
    imap = ImapChannel(settings.email)
    imap.connect_store(checkpoints=Checkpoints(store, clock=clock),
                       metrics=ImapMetrics(metrics.registry))
    batches: list[int] = []
    read = imap._journal

    async def observed(mails: list[tuple[int, bytes]]) -> None:
        batches.append(len(mails))
        await read(mails)

    imap._journal = observed  # type: ignore[method-assign]
    journal.start()
    await imap.start(journal.accept)
    try:
        await eventually(lambda: _rows_at_least(store, 2000), timeout=60)
        await eventually(lambda: _unseen(box, 0))
    finally:
        await imap.stop()
        await journal.stop()
    async with store.reader() as s:
        rows = (await s.execute(select(func.count()).select_from(InboundJournal))).scalar_one()
        [cp] = (await s.execute(select(ChannelCheckpoint))).scalars().all()
    await store.dispose()
    assert rows == 2000 and cp.value["last_uid"] == 2000
    assert sum(batches) == 2000 and max(batches) == 100 and len(batches) == 20
    assert "frontdesk_imap_fetched_total 2000.0" in metrics.render().decode()


async def _rows_at_least(store: Any, n: int) -> bool:
    async with store.reader() as s:
        return int((await s.execute(select(func.count()).select_from(InboundJournal)))
                   .scalar_one()) >= n
