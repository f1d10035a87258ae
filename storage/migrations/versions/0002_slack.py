"""slack desk: thread per conversation, staff messages, seen event ids; full-text search

Revision ID: 0002_slack
Revises: 0001
Create Date: 2026-11-23

Full-text search over messages (subject and text) is an FTS5 table kept in step by triggers on
SQLite, and a GIN index on ``to_tsvector('simple', ...)`` on PostgreSQL (queried with the same
expression in :mod:`frontdesk.domain.search`). A later SQLite migration that rebuilds the
``messages`` table (batch mode "move and copy") drops the triggers with it and must create them
again (:func:`sqlite_fts_triggers`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0002_slack"
down_revision = "0001"
branch_labels = None
depends_on = None

PG_FTS_INDEX = "ix_messages_fulltext"
PG_FTS_EXPRESSION = """to_tsvector('simple', coalesce("subject", '') || ' ' || coalesce("text", ''))"""

SQLITE_FTS_TRIGGERS = (
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, subject, text) VALUES (new.id, new.subject, new.text);
    END""",
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, subject, text)
        VALUES ('delete', old.id, old.subject, old.text);
    END""",
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF subject, text ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, subject, text)
        VALUES ('delete', old.id, old.subject, old.text);
        INSERT INTO messages_fts(rowid, subject, text) VALUES (new.id, new.subject, new.text);
    END""",
)


def sqlite_fts_triggers() -> None:
    for statement in SQLITE_FTS_TRIGGERS:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "slack_threads",
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=True),
        sa.Column("root_attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rendered_hash", sa.String(length=64), nullable=True),
        sa.Column("alerts_only_notice", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name=op.f("fk_slack_threads_conversation_id_conversations")),
        sa.PrimaryKeyConstraint("conversation_id", name=op.f("pk_slack_threads")),
        sa.UniqueConstraint("channel_id", "ts", name="uq_slack_threads_channel_id_ts"),
    )
    op.create_table(
        "slack_messages",
        sa.Column("id", ID, nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("user_name", sa.String(length=256), nullable=False),
        sa.Column("user_email", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_slack_messages_message_id_messages")),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name=op.f("fk_slack_messages_conversation_id_conversations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slack_messages")),
        sa.UniqueConstraint("channel_id", "ts", name="uq_slack_messages_channel_id_ts"),
        sa.UniqueConstraint("message_id", name=op.f("uq_slack_messages_message_id")),
    )
    op.create_table(
        "slack_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_slack_events")),
    )
    with op.batch_alter_table("slack_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_slack_events_received_at"), ["received_at"],
                              unique=False)
    op.create_table(
        "slack_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_slack_state")),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE messages_fts USING fts5(subject, text, content='messages', "
            "content_rowid='id', tokenize='unicode61 remove_diacritics 2')")
        sqlite_fts_triggers()
        op.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
    elif dialect == "postgresql":
        op.execute(f"CREATE INDEX {PG_FTS_INDEX} ON messages USING gin ({PG_FTS_EXPRESSION})")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    elif dialect == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {PG_FTS_INDEX}")
    with op.batch_alter_table("slack_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slack_events_received_at"))
    op.drop_table("slack_state")
    op.drop_table("slack_events")
    op.drop_table("slack_messages")
    op.drop_table("slack_threads")
