"""outbox channel: one lane per kind, conversation and channel

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

``outbox.channel`` says where a row goes: the customer channel of a message (``email``, ``sms``,
...), ``slack`` for the Slack desk's work, otherwise the row's kind. The outbox keeps order only
within a lane, now (kind, conversation, channel): a text message that cannot go no longer holds
up an email reply in the same conversation. The lane index gets the column before ``id``, so the
head-of-lane check stays one index probe. Rows still waiting (pending) and failed ones (which
``frontdesk outbox retry`` can queue again) get their channel from their payload here; rows
written later get it when they are written. A row an older version writes during a rolling
upgrade has none, and the outbox keeps it in the old, wider lane.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_outbox = sa.table(
    "outbox",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("payload", sa.JSON),
    sa.column("state", sa.String),
    sa.column("channel", sa.String),
)


def _remote(kind: str, payload: Any) -> str:
    """The rule of ``frontdesk.storage.models.outbox_remote`` as of this revision."""
    payload = payload if isinstance(payload, dict) else {}
    channel = payload.get("channel")
    if isinstance(channel, str) and channel:
        return channel[:32]
    if payload.get("slack_channel"):
        return "slack"
    return str(kind)[:32]


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("channel", sa.String(length=32), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.select(_outbox.c.id, _outbox.c.kind, _outbox.c.payload)
                        .where(_outbox.c.state.in_(("pending", "failed")))).all()
    if rows:
        bind.execute(sa.update(_outbox).where(_outbox.c.id == sa.bindparam("row_id"))
                     .values(channel=sa.bindparam("remote")),
                     [{"row_id": r.id, "remote": _remote(r.kind, r.payload)} for r in rows])
    op.drop_index("ix_outbox_lane", table_name="outbox")
    op.create_index("ix_outbox_lane", "outbox",
                    ["state", "kind", "conversation_id", "channel", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lane", table_name="outbox")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("channel")
    op.create_index("ix_outbox_lane", "outbox", ["state", "kind", "conversation_id", "id"])
