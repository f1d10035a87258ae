"""saved_replies: saved replies kept in the store; an index on conversations.updated_at

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

One row per saved reply: its name (unique, lower-case), its text, who saved it and when. The
``[saved_replies]`` table of the config file still works beside it. Conversations get an index
on ``updated_at``: the similar-conversations index reads what changed since its last look.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "saved_replies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_saved_replies"),
    )
    op.create_index("ix_conversations_updated_at", "conversations", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_conversations_updated_at", table_name="conversations")
    op.drop_table("saved_replies")
