"""outbox lanes: an index for the head-of-lane rule

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23

The outbox worker takes a row only when no earlier pending row of its lane (kind, conversation)
exists. Without an index on the lane, that check scanned the pending rows for every candidate:
with a backlog of 15,000 rows one round took 93 s on SQLite. With (state, kind, conversation_id,
id) it is an index probe.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_lane", "outbox", ["state", "kind", "conversation_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lane", table_name="outbox")
