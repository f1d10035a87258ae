"""cluster: outbox claims, and NOTIFY triggers that wake the other instances

Revision ID: 0006
Revises: 0005_scheduler
Create Date: 2026-11-24

Several ``frontdesk run`` instances may share one PostgreSQL database. ``outbox.claimed_by``
names the instance that claimed a row to send it (the claim's lease is the row's
``next_attempt_at``, pushed ahead while it sends; see frontdesk.daemon.process.outbox). On PostgreSQL,
statement triggers notify ``frontdesk_outbox`` after rows are inserted into the outbox and
``frontdesk_journal`` after rows are inserted into the inbound journal; the notification goes out
when the transaction commits, so every instance's idle worker wakes for work any code path wrote
(see frontdesk.daemon.process.notify). SQLite (one instance) gets the column only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005_scheduler"
branch_labels = None
depends_on = None

# (trigger and function name, table, notification channel)
_TRIGGERS = (
    ("frontdesk_notify_outbox", "outbox", "frontdesk_outbox"),
    ("frontdesk_notify_journal", "inbound_journal", "frontdesk_journal"),
)


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table, channel in _TRIGGERS:
        op.execute(f"""
            CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{channel}', '');
                RETURN NULL;
            END
            $$""")
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute(f"CREATE TRIGGER {name} AFTER INSERT ON {table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table, _channel in _TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
