"""Messages that fail to process, as a user sees them: one poisoned message is tried a few times
with short pauses and then becomes a visible dead letter with its one-line reason, the messages
behind it are processed meanwhile, and `frontdesk journal discard` retires a dead letter that can
never be processed (kept, audited, no longer counted as failed). Real daemon, real SMTP over
loopback, the real CLI; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from frontdesk.storage.models import Event, InboundJournal
from tests.support.helpers import (
    conversations,
    detail,
    eventually,
    mail,
    processed,
    run_cli,
    send,
)


def _config(tmp_path: Path, settings: Any) -> str:
    """A config file naming the daemon's store, for the command line beside it."""
    path = tmp_path / "frontdesk.toml"
    path.write_text(f"""
[database]
url = "{settings.database.url}"
[email]
inbox_addresses = ["support@example.com"]
[email.smtp_server]
listen = "127.0.0.1:0"
[daemon]
data_dir = "{settings.daemon.data_dir}"
""")
    return str(path)


async def _cli(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, str, str]:
    """``frontdesk ARGS -c CONFIG`` in-process."""
    return await run_cli(capsys, *args, "-c", config)


async def _row(d: Any, remote_id: str) -> InboundJournal:
    async with d.store.reader() as s:
        return (await s.execute(select(InboundJournal)
                                .where(InboundJournal.remote_id == remote_id))).scalar_one()


def _state_is(d: Any, remote_id: str, state: str) -> Callable[[], Any]:
    async def check() -> InboundJournal | None:
        row = await _row(d, remote_id)
        return row if row.state == state else None
    return check


async def _subjects(d: Any) -> set[str]:
    return {c.subject for c in await conversations(d.store)}


async def test_a_message_that_cannot_be_stored_fails_alone_and_the_rest_go_on(
        database_url: str, make_settings: Any, daemon_factory: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(database_url=database_url)
    d = await daemon_factory(settings)
    # The disk goes wrong under the running daemon: no attachment file can be written.
    files = Path(settings.daemon.data_dir) / "attachments"
    shutil.rmtree(files, ignore_errors=True)
    files.parent.mkdir(exist_ok=True)
    files.write_bytes(b"")
    poisoned = mail(msgid="<poisoned@example.org>", subject="Invoice attached")
    poisoned.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf",
                            filename="invoice.pdf")
    await send(d.email.smtp.port, poisoned)
    sent = time.monotonic()
    plain = {f"Plain question {i}" for i in range(3)}
    for i in range(3):
        await send(d.email.smtp.port, mail(frm=f"Customer {i} <c{i}@example.org>",
                                           msgid=f"<plain-{i}@example.org>",
                                           subject=f"Plain question {i}"))

    # The plain ones are processed at once, while the poisoned one is still being retried.
    await eventually(lambda: _has(_subjects(d), plain), timeout=5)
    retrying = await _row(d, "poisoned@example.org")
    assert retrying.state == "pending" and retrying.attempts >= 1
    assert (retrying.error or "").startswith("NotADirectoryError")

    # After its few attempts it is a dead letter with its one-line reason.
    failed = await eventually(_state_is(d, "poisoned@example.org", "failed"), timeout=15)
    assert time.monotonic() - sent < 10
    assert failed.attempts == d.processor.error_attempts == 3
    assert failed.error is not None and failed.error.startswith(
        f"NotADirectoryError: [Errno 20] Not a directory: '{files}/")
    assert await _subjects(d) == plain  # no conversation for it (yet)
    await d.refresh_gauges()
    metrics = d.metrics.render().decode()
    assert "frontdesk_journal_failed_rows 1.0" in metrics
    assert "frontdesk_journal_pending 0.0" in metrics

    config = _config(tmp_path, settings)
    code, out, _ = await _cli(capsys, config, "journal", "--failed")
    assert code == 0
    assert "poisoned@example.org" in out and "NotADirectoryError" in out
    assert len(out.strip().splitlines()) == 2  # the row and its reason, no traceback

    # The disk is fixed; `journal retry` stores it.
    files.unlink()
    code, out, _ = await _cli(capsys, config, "journal", "retry", str(failed.id))
    assert code == 0 and f"#{failed.id}: stored in FD-" in out
    assert (await _row(d, "poisoned@example.org")).state == "done"
    invoice = next(c for c in await conversations(d.store) if c.subject == "Invoice attached")
    [message] = (await detail(d.store, invoice.id))["messages"]
    assert [a["filename"] for a in message["attachments"]] == ["invoice.pdf"]


async def _has(found: Any, wanted: set[str]) -> bool:
    return wanted <= await found


async def test_a_failing_message_is_tried_a_few_times_with_pauses_then_failed(
        database_url: str, make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(database_url=database_url))
    attempts: list[float] = []

    async def trips_on_poison(_s: Any, _conversation: Any, message: Any, _new: bool) -> None:
        if message.subject == "Poison":
            attempts.append(time.monotonic())
            raise ValueError("injected: this message breaks a hook\nsecond line")

    d.inbound_hooks.append(trips_on_poison)
    await send(d.email.smtp.port, mail(msgid="<poison@example.org>", subject="Poison"))
    await send(d.email.smtp.port, mail(msgid="<behind@example.org>", subject="Behind it"))
    await eventually(lambda: _has(_subjects(d), {"Behind it"}), timeout=5)
    assert len(attempts) < 3  # it did not wait for the poisoned one to be given up

    failed = await eventually(_state_is(d, "poison@example.org", "failed"), timeout=15)
    assert failed.error is not None
    assert failed.error.splitlines()[0] == (
        "ValueError: injected: this message breaks a hook second line")
    assert len(attempts) == failed.attempts == 3
    pause = d.processor.error_pause
    assert attempts[1] - attempts[0] >= 0.9 * pause  # short pauses, each twice the last
    assert attempts[2] - attempts[1] >= 1.8 * pause
    await asyncio.sleep(2 * pause)
    assert len(attempts) == 3  # and no more
    assert await _subjects(d) == {"Behind it"}  # its transaction was rolled back whole


async def test_a_passing_fault_heals_on_the_next_attempt(
        database_url: str, make_settings: Any, daemon_factory: Any) -> None:
    d = await daemon_factory(make_settings(database_url=database_url))
    trips = {"left": 1}

    async def flaky(_s: Any, _conversation: Any, _message: Any, _new: bool) -> None:
        if trips["left"]:
            trips["left"] -= 1
            raise ConnectionResetError("injected: a passing fault")

    d.inbound_hooks.append(flaky)
    await send(d.email.smtp.port, mail(msgid="<once@example.org>"))
    done = await eventually(_state_is(d, "once@example.org", "done"), timeout=10)
    assert done.attempts == 2 and done.error is None
    [conversation] = await conversations(d.store)
    assert conversation.subject == "Order 1234 never arrived"
    assert "frontdesk_journal_failed_total{" not in d.metrics.render().decode()


REASON = "ValueError: this message cannot be stored (injected)"


def _refuse_poison(d: Any) -> None:
    """Make every mail whose subject starts with "Poison" fail to process, quickly."""
    d.processor.error_pause = 0.05

    async def refuse(_s: Any, _conversation: Any, message: Any, _new: bool) -> None:
        if message.subject.startswith("Poison"):
            raise ValueError("this message cannot be stored (injected)")

    d.inbound_hooks.append(refuse)


async def _dead_letter(d: Any, msgid: str) -> InboundJournal:
    """A dead letter: a mail that fails to process, its attempts used up."""
    await send(d.email.smtp.port, mail(msgid=f"<{msgid}>", subject=f"Poison {msgid}"))
    return await eventually(_state_is(d, msgid, "failed"))


async def test_discard_retires_a_dead_letter_for_good(
        database_url: str, make_settings: Any, daemon_factory: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(database_url=database_url)
    d = await daemon_factory(settings)
    _refuse_poison(d)
    config = _config(tmp_path, settings)
    dead = await _dead_letter(d, "dead@example.org")
    assert dead.error is not None and dead.error.startswith(REASON)
    await send(d.email.smtp.port, mail(msgid="<fine@example.org>"))
    await eventually(lambda: processed(d.store))

    code, out, err = await _cli(capsys, config, "journal", "discard", str(dead.id),
                                "--as", "Grace")
    assert (code, err) == (0, "")
    assert f"journal #{dead.id} discarded by Grace" in out
    assert REASON in out

    # No longer failed: not listed, not counted, not retried; still kept, with its state.
    code, out, _ = await _cli(capsys, config, "journal", "--failed", "--json")
    assert json.loads(out) == []
    code, out, _ = await _cli(capsys, config, "journal", "--json")
    listed = {r["id"]: r for r in json.loads(out)}
    assert listed[dead.id]["state"] == "discarded"
    assert listed[dead.id]["error"] == REASON
    code, out, _ = await _cli(capsys, config, "journal")
    assert f"#{dead.id:<6} discarded email" in out
    await d.refresh_gauges()
    assert "frontdesk_journal_failed_rows 0.0" in d.metrics.render().decode()
    code, out, _ = await _cli(capsys, config, "journal", "retry")
    assert (code, out.strip()) == (0, "no failed messages")
    code, _, err = await _cli(capsys, config, "journal", "retry", str(dead.id))
    assert code == 1 and f"#{dead.id}" in err
    row = await _row(d, dead.remote_id)
    assert (row.state, row.raw) == ("discarded", dead.raw)

    # The audit says who, which row and why it had failed.
    async with d.store.reader() as s:
        [event] = (await s.execute(select(Event).where(Event.kind == "journal_discarded"))
                   ).scalars().all()
    assert event.actor == "Grace"
    assert event.data == {"journal_id": dead.id, "channel": "email",
                          "remote_id": dead.remote_id, "error": REASON}

    # Without --as: $USER.
    monkeypatch.setenv("USER", "ops-oncall")
    other = await _dead_letter(d, "another@example.org")
    code, out, _ = await _cli(capsys, config, "journal", "discard", str(other.id))
    assert code == 0 and "discarded by ops-oncall" in out
    async with d.store.reader() as s:
        actors = (await s.execute(select(Event.actor).where(Event.kind == "journal_discarded")
                                  .order_by(Event.id))).scalars().all()
    assert actors == ["Grace", "ops-oncall"]


async def test_discard_refuses_unknown_and_unfailed_rows(
        database_url: str, make_settings: Any, daemon_factory: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(database_url=database_url)
    d = await daemon_factory(settings)
    _refuse_poison(d)
    config = _config(tmp_path, settings)
    await send(d.email.smtp.port, mail(msgid="<fine@example.org>"))
    await eventually(lambda: processed(d.store))
    done = await _row(d, "fine@example.org")
    dead = await _dead_letter(d, "dead@example.org")
    assert (await _cli(capsys, config, "journal", "discard", str(dead.id)))[0] == 0

    for journal_id, why in ((999, "journal #999 does not exist"),
                            (done.id, f"journal #{done.id} is done, not failed"),
                            (dead.id, f"journal #{dead.id} is discarded, not failed")):
        code, out, err = await _cli(capsys, config, "journal", "discard", str(journal_id))
        assert code == 1 and out == ""
        assert err.startswith(f"frontdesk: {why}") and len(err.strip().splitlines()) == 1
    async with d.store.reader() as s:
        events = (await s.execute(select(Event).where(Event.kind == "journal_discarded"))
                  ).scalars().all()
    assert len(events) == 1  # the refusals changed nothing
    assert (await _row(d, "fine@example.org")).state == "done"
