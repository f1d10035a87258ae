"""acknowledgements by time: the global acknowledgement rate limits

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

``acknowledgement.global_rate_limits`` counts every acknowledgement of the last window, whoever
it went to; this index keeps that count a range scan of the window's rows.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_acknowledgements_created_at", "acknowledgements", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_acknowledgements_created_at", table_name="acknowledgements")
