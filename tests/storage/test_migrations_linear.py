"""The migration history is one line (0001 -> 0002_slack -> ... -> 0009), and stores migrated by
frontdesk 0.1.0, whose history had a branch per feature off 0001, upgrade in place.

A 0.1.0 store's ``alembic_version`` holds one row per applied branch head. ``Store.upgrade``
(what ``frontdesk db upgrade`` and ``ensure_schema`` run) first records such a table as the one
revision of the linear history it amounts to, in the transaction Alembic then migrates in; rows
that skip a revision of the line are refused with :class:`MigrationError`, changing nothing.

The fixture ``tests/data/store-0.1.0-branched.sqlite3`` is a store made by the 0.1.0 code (the
branched history, before the history was made linear), like this:

1. a config with ``[database] url`` pointing into a temp dir, free loopback ports for
   ``[http] listen`` and ``[email.smtp_server] listen``, ``[email] inbox_addresses =
   ["support@example.com"]``, ``[email.outbound]`` at a local aiosmtpd sink (``starttls =
   "off"``) and ``[sla] business_hours = "always"``; ``frontdesk init -c frontdesk.toml``;
2. ``frontdesk run -c frontdesk.toml``; one email sent to its SMTP port with smtplib, From
   "Ada Lovelace <ada@example.org>", Subject "Invoice 1843 is missing", Message-ID
   ``<fixture-1@example.org>``, body "Hello,\\n\\nmy invoice for order 1843 never arrived. Could
   you send it again?\\n\\nAda\\n" (conversation FD-1; the scheduler sent its automatic reply);
3. ``frontdesk reply FD-1 "Hello Ada, sorry about that: the invoice for order 1843 is attached
   again." --as "Grace Hopper" -c frontdesk.toml`` (sent through the sink), then SIGTERM;
4. with Python's sqlite3: ``PRAGMA wal_checkpoint(TRUNCATE)``, ``PRAGMA page_size=1024`` and
   ``VACUUM`` (only to keep the file small: 76 KiB), then back to ``journal_mode=WAL`` and
   ``PRAGMA wal_checkpoint(TRUNCATE)``: one file, ``integrity_check`` ok.

Its ``alembic_version`` holds the six rows 0002_slack, 0003_twilio, 0004_email, 0005_scheduler,
0006 and 0007. The PostgreSQL tests (``FRONTDESK_TEST_POSTGRES_URL``; each on its own database,
dropped afterwards) build the same branched version table by hand on a migrated store.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from frontdesk.storage.db import (
    MIGRATIONS_DIR,
    MigrationError,
    Store,
    linear_revision,
    migration_chain,
)
from frontdesk.storage.models import Contact, Conversation, Identity, Message

FIXTURE = Path(__file__).parent / "data" / "store-0.1.0-branched.sqlite3"
LINE = ("0001", "0002_slack", "0003_twilio", "0004_email", "0005_scheduler", "0006", "0007")
"""The revisions of 0.1.0, in the order the linear history applies them."""
OLD_HEADS = LINE[1:]
"""What a fully migrated 0.1.0 store's version table holds: every branch head."""
CUSTOMER_TEXT = "my invoice for order 1843 never arrived. Could you send it again?"
STAFF_TEXT = "Hello Ada, sorry about that: the invoice for order 1843 is attached again."
REWRITE = "recorded as revision"
"""Part of the one info line logged when a branched version table is rewritten."""


def script_directory() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def head() -> str:
    [only] = script_directory().get_heads()
    return only


@pytest.fixture
def branched_store(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 fixture store (the fixture itself is never written)."""
    path = tmp_path / "frontdesk.db"
    shutil.copyfile(FIXTURE, path)
    return path


@pytest.fixture
def db_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="frontdesk.storage.db"):
        yield caplog


def rewrites(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "frontdesk.storage.db" and REWRITE in r.getMessage()]


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def sqlite_query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, params).fetchall()


def sqlite_versions(path: Path) -> list[str]:
    return [row[0] for row in sqlite_query(path, "SELECT version_num FROM alembic_version")]


def sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    return sorted(sqlite_query(path, "SELECT type, name, tbl_name, sql FROM sqlite_master"))


def sqlite_snapshot(path: Path) -> dict[str, Any]:
    """Everything a migration could change: the version rows, the schema, every other row."""
    tables = [name for (name,) in sqlite_query(
        path, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
              " AND name <> 'alembic_version'")]
    return {"versions": sorted(sqlite_versions(path)), "schema": sqlite_schema(path),
            "rows": {t: sorted(map(repr, sqlite_query(path, f'SELECT * FROM "{t}"')))
                     for t in tables},
            "columns": {t: [c[1] for c in sqlite_query(path, f'PRAGMA table_info("{t}")')]
                        for t in tables}}


def sqlite_rows_as_before(path: Path, before: dict[str, Any]) -> dict[str, list[str]]:
    """Every row of the tables in the snapshot ``before``, read as the columns they had then (a
    later migration may add a column: the rows must still hold what they held)."""
    rows: dict[str, list[str]] = {}
    for table, had in before["columns"].items():
        columns = ", ".join(f'"{c}"' for c in had)
        rows[table] = sorted(map(repr, sqlite_query(path, f'SELECT {columns} FROM "{table}"')))
    return rows


async def versions(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        return sorted(r[0] for r in await conn.execute(text("SELECT version_num FROM "
                                                            "alembic_version")))


async def record_versions(store: Store, revisions: Iterable[str]) -> None:
    """Make the version table hold exactly ``revisions`` (as 0.1.0 left it)."""
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM alembic_version"))
        for revision in revisions:
            await conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:r)"),
                               {"r": revision})


async def conversation_one(store: Store) -> tuple[str, list[tuple[str, str, str]]]:
    """FD-1's subject and its messages as (author, author name, text), oldest first."""
    async with store.reader() as s:
        conversation = await s.get(Conversation, 1)
        assert conversation is not None, "FD-1 is gone"
        messages = (await s.execute(select(Message).where(Message.conversation_id == 1)
                                    .order_by(Message.id))).scalars()
        return conversation.subject, [(m.author, m.author_name, m.text) for m in messages]


def frontdesk_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``frontdesk`` command next to this interpreter."""
    executable = Path(sys.executable).parent / "frontdesk"
    return subprocess.run([str(executable), *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=120, check=False)


# --- the history ------------------------------------------------------------------------------

def test_history_is_one_line() -> None:
    script = script_directory()
    assert script.get_heads() == ["0013"]
    assert script.get_bases() == ["0001"]
    for revision in script.walk_revisions():
        assert not revision.is_branch_point, f"{revision.revision} has several children"
        assert not revision.is_merge_point, f"{revision.revision} merges branches"
    assert migration_chain()[:len(LINE)] == LINE
    assert migration_chain()[-1] == head()


@pytest.mark.parametrize(("recorded", "expected"), [
    (OLD_HEADS, "0007"),  # 0.1.0 as released
    (LINE[1:6], "0006"),  # before the outbox lane index
    (LINE[1:5], "0005_scheduler"),  # before several instances
    (("0002_slack", "0003_twilio"), "0003_twilio"),
    (("0003_twilio",), None),  # one row: the linear history's own
    ((), None),  # a new store
    (("0002_slack", "0099_future"), None),  # unknown: Alembic reports it
])
def test_linear_revision(recorded: tuple[str, ...], expected: str | None) -> None:
    assert linear_revision(recorded, LINE) == expected
    assert linear_revision(tuple(reversed(recorded)), LINE) == expected


@pytest.mark.parametrize(("recorded", "missing"), [
    (("0002_slack", "0004_email"), "0003_twilio"),
    (("0003_twilio", "0004_email"), "0002_slack"),
    (("0002_slack", "0003_twilio", "0004_email", "0005_scheduler", "0007"), "0006"),
])
def test_linear_revision_refuses_a_gap(recorded: tuple[str, ...], missing: str) -> None:
    with pytest.raises(MigrationError) as refused:
        linear_revision(recorded, LINE)
    message = str(refused.value)
    assert f"not {missing}," in message and "left unchanged" in message
    assert "\n" not in message


# --- stores -----------------------------------------------------------------------------------

async def test_fresh_store_records_one_revision(database_url: str,
                                                db_log: pytest.LogCaptureFixture) -> None:
    store = Store(database_url)
    try:
        await store.ensure_schema()
        assert await versions(store) == [head()]
        assert await store.current_revisions() == {head()}
        await store.upgrade()
        assert await versions(store) == [head()]
    finally:
        await store.dispose()
    assert not rewrites(db_log)


async def test_branched_sqlite_store_upgrades_in_place(branched_store: Path, tmp_path: Path,
                                                       db_log: pytest.LogCaptureFixture) -> None:
    assert sorted(sqlite_versions(branched_store)) == sorted(OLD_HEADS)
    before = sqlite_snapshot(branched_store)
    store = Store(sqlite_url(branched_store))
    try:
        await store.upgrade()
        assert await versions(store) == [head()]
        subject, messages = await conversation_one(store)
    finally:
        await store.dispose()
    [line] = rewrites(db_log)
    assert line.levelno == logging.INFO
    assert ", ".join(OLD_HEADS) in line.getMessage()

    assert sqlite_versions(branched_store) == [head()]
    assert subject == "Invoice 1843 is missing"
    assert [(author, name) for author, name, _ in messages] == [
        ("customer", "Ada Lovelace"), ("system", "Automatic reply"), ("staff", "Grace Hopper")]
    assert CUSTOMER_TEXT in messages[0][2]
    assert messages[2][2] == STAFF_TEXT
    after = sqlite_snapshot(branched_store)
    # every row of every table kept as it was (migrations after 0.1.0 only add columns)
    assert sqlite_rows_as_before(branched_store, before) == before["rows"]
    found = sqlite_query(branched_store, "SELECT rowid FROM messages_fts WHERE messages_fts "
                                         "MATCH 'arrived OR attached' ORDER BY rowid")
    assert found == [(1,), (3,)]  # the full-text index still answers

    # the same schema as a store made by the linear history
    fresh = tmp_path / "fresh.db"
    store = Store(sqlite_url(fresh))
    try:
        await store.upgrade()
    finally:
        await store.dispose()
    assert sqlite_schema(fresh) == after["schema"]

    # a second upgrade changes nothing
    db_log.clear()
    store = Store(sqlite_url(branched_store))
    try:
        await store.upgrade()
        await store.ensure_schema()
    finally:
        await store.dispose()
    assert not rewrites(db_log)
    assert sqlite_snapshot(branched_store) == after


async def test_partly_migrated_branched_store_gets_the_rest(database_url: str,
                                                            db_log: pytest.LogCaptureFixture
                                                            ) -> None:
    """A 0.1.0 store from before 0006 existed: recorded as 0005_scheduler, then 0006 and 0007
    run (the outbox claim column and lane index, on PostgreSQL the NOTIFY triggers too)."""
    store = Store(database_url)
    try:
        await store.upgrade("0005_scheduler")
        await record_versions(store, LINE[1:5])
        await store.ensure_schema()
        assert await versions(store) == [head()]
        async with store.engine.connect() as conn:
            columns, indexes = await conn.run_sync(lambda c: (
                {col["name"] for col in inspect(c).get_columns("outbox")},
                {ix["name"] for ix in inspect(c).get_indexes("outbox")}))
            if store.dialect == "postgresql":
                triggers = set((await conn.execute(text(
                    "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))).scalars())
                assert {"frontdesk_notify_outbox", "frontdesk_notify_journal"} <= triggers
    finally:
        await store.dispose()
    assert "claimed_by" in columns and "ix_outbox_lane" in indexes
    [line] = rewrites(db_log)
    assert "recorded as revision 0005_scheduler" in line.getMessage()


async def test_gap_is_refused_and_changes_nothing(branched_store: Path) -> None:
    with closing(sqlite3.connect(branched_store)) as db, db:
        db.execute("DELETE FROM alembic_version")
        db.executemany("INSERT INTO alembic_version (version_num) VALUES (?)",
                       [("0002_slack",), ("0004_email",)])
    before = sqlite_snapshot(branched_store)
    store = Store(sqlite_url(branched_store))
    try:
        with pytest.raises(MigrationError, match=r"records revisions 0002_slack, 0004_email but "
                                                 r"not 0003_twilio,") as refused:
            await store.upgrade()
        assert isinstance(refused.value, RuntimeError)
        with pytest.raises(MigrationError):
            await store.ensure_schema()  # what frontdesk run does at start
    finally:
        await store.dispose()
    assert sqlite_snapshot(branched_store) == before

    # the command line reports it in one line, exit 1, and leaves the store as it is
    config = branched_store.parent / "frontdesk.toml"
    config.write_text(f'[database]\nurl = "{sqlite_url(branched_store)}"\n')
    done = frontdesk_cli(config, "db", "upgrade")
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    [message] = done.stderr.splitlines()
    assert message.startswith("frontdesk: MigrationError: cannot migrate the store")
    assert "not 0003_twilio," in message
    assert sqlite_snapshot(branched_store) == before


async def test_gap_is_refused_on_either_backend(database_url: str) -> None:
    store = Store(database_url)
    try:
        await store.upgrade()
        await record_versions(store, ("0002_slack", "0003_twilio", "0004_email", "0007"))
        with pytest.raises(MigrationError, match=r"not 0005_scheduler, 0006,"):
            await store.upgrade()
        assert await versions(store) == ["0002_slack", "0003_twilio", "0004_email", "0007"]
    finally:
        await store.dispose()


async def test_branched_postgres_store_upgrades_in_place(postgres_url: str,
                                                         db_log: pytest.LogCaptureFixture
                                                         ) -> None:
    """0.1.0 on PostgreSQL: a store at the head whose version table holds the six branch heads,
    with a conversation in it, upgrades to one row and keeps the conversation."""
    now = datetime(2026, 12, 6, 7, 17, tzinfo=UTC)
    store = Store(postgres_url)
    try:
        await store.upgrade(OLD_HEADS[-1])  # the schema of 0.1.0
        async with store.session() as s:
            contact = Contact(name="Ada Lovelace", tags={}, created_at=now, updated_at=now)
            s.add(contact)
            await s.flush()
            s.add(Identity(contact_id=contact.id, channel="email", address="ada@example.org",
                           created_at=now))
            # the columns of 0.1.0 only (the model has later ones)
            await s.execute(text(
                "INSERT INTO conversations (id, status, priority, subject, channel, contact_id, "
                "created_at, updated_at, escalation_level, sla_state) VALUES (1, 'open', "
                "'normal', 'Invoice 1843 is missing', 'email', :contact, :now, :now, 0, '{}')"),
                {"contact": contact.id, "now": now})
            s.add_all([
                Message(conversation_id=1, direction="in", author="customer",
                        author_name="Ada Lovelace", channel="email", address="ada@example.org",
                        subject="Invoice 1843 is missing", text=CUSTOMER_TEXT, headers={},
                        created_at=now),
                Message(conversation_id=1, direction="out", author="staff",
                        author_name="Grace Hopper", channel="email", address="ada@example.org",
                        subject="Re: Invoice 1843 is missing [FD-1]", text=STAFF_TEXT,
                        headers={}, delivery_status="sent", created_at=now, sent_at=now),
            ])
        await record_versions(store, OLD_HEADS)
        assert await versions(store) == sorted(OLD_HEADS)

        await store.upgrade()
        assert await versions(store) == [head()]
        [line] = rewrites(db_log)
        assert ", ".join(OLD_HEADS) in line.getMessage()
        assert await conversation_one(store) == ("Invoice 1843 is missing", [
            ("customer", "Ada Lovelace", CUSTOMER_TEXT), ("staff", "Grace Hopper", STAFF_TEXT)])

        db_log.clear()
        await store.upgrade()  # a no-op now
        assert await versions(store) == [head()]
        assert not rewrites(db_log)
    finally:
        await store.dispose()


async def test_outbox_rows_waiting_at_0012_get_their_urgency(database_url: str) -> None:
    """0013: a staff reply still waiting when the store is upgraded goes before the automatic
    messages, as it did before the column existed; a failed one keeps that for `outbox retry`."""
    store = Store(database_url)
    try:
        await store.upgrade("0012")
        rows = [("deliver", {"channel": "email", "text": "staff reply"}, "pending"),
                ("deliver", {"channel": "email", "text": "ack", "automated": True}, "pending"),
                ("deliver", {"channel": "sms", "text": "failed reply"}, "failed"),
                ("slack", {"op": "root", "slack_channel": "C1"}, "pending")]
        async with store.engine.begin() as conn:
            for i, (kind, payload, state) in enumerate(rows):
                await conn.execute(
                    text("INSERT INTO outbox (kind, payload, idempotency_key, state, attempts, "
                         "next_attempt_at, created_at, channel) VALUES (:kind, :payload, :key, "
                         ":state, 0, :now, :now, :channel)"),
                    {"kind": kind, "payload": json.dumps(payload), "key": f"k{i}", "state": state,
                     "now": datetime(2026, 12, 7, tzinfo=UTC),
                     "channel": payload.get("channel", "slack")})
        await store.ensure_schema()
        assert await versions(store) == [head()]
        async with store.engine.connect() as conn:
            found = dict((await conn.execute(text(
                "SELECT idempotency_key, urgency FROM outbox"))).all())
    finally:
        await store.dispose()
    assert found == {"k0": 0, "k1": 1, "k2": 0, "k3": 1}
