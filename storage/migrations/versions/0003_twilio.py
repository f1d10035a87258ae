"""twilio and telegram: phone opt-outs, outbound parts and their delivery status, telegram offsets

Revision ID: 0003_twilio
Revises: 0002_slack
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# INTEGER on SQLite so the primary key is the autoincrementing rowid; BIGINT elsewhere.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0003_twilio"
down_revision = "0002_slack"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "phone_opt_outs",
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("keyword", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_phone_opt_outs")),
    )
    op.create_table(
        "outbound_parts",
        sa.Column("id", ID, nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("remote_id", sa.String(length=128), nullable=False),
        sa.Column("outbox_key", sa.String(length=128), nullable=True),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbound_parts")),
        sa.UniqueConstraint("channel", "remote_id", name="uq_outbound_parts_channel_remote_id"),
        sa.UniqueConstraint("outbox_key", "part", name="uq_outbound_parts_outbox_key"),
    )
    with op.batch_alter_table("outbound_parts", schema=None) as batch_op:
        batch_op.create_index("ix_outbound_parts_message_id", ["message_id"], unique=False)

    op.create_table(
        "telegram_offsets",
        sa.Column("bot_id", sa.String(length=32), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bot_id", name=op.f("pk_telegram_offsets")),
    )


def downgrade() -> None:
    op.drop_table("telegram_offsets")
    with op.batch_alter_table("outbound_parts", schema=None) as batch_op:
        batch_op.drop_index("ix_outbound_parts_message_id")
    op.drop_table("outbound_parts")
    op.drop_table("phone_opt_outs")
