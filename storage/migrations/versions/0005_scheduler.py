"""scheduler: due times and SLA bookkeeping on conversations, acknowledgements, ratings

Revision ID: 0005_scheduler
Revises: 0004_email
Create Date: 2026-11-23

``next_due_at`` is the earliest thing the scheduler has to do for a conversation (indexed: a sweep
reads only due rows). ``sla_checked_at`` is the ``updated_at`` the scheduler last planned from; the
partial index ``ix_conversations_sla_dirty`` holds only rows whose ``updated_at`` differs from it
(changed since, whichever instance's clock wrote it), so a sweep finds what
staff changed elsewhere (Slack, the command line) without reading every open conversation.
Conversations that exist before this migration are taken as planned (nothing is sent for them
until they change).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0005_scheduler"
down_revision = "0004_email"
branch_labels = None
depends_on = None

_TIMES = ("ack_due_at", "next_response_due_at", "resolution_due_at", "escalation_due_at",
          "survey_due_at", "survey_sent_at", "reminder_due_at", "next_due_at", "sla_checked_at",
          "rated_at")
DIRTY = "updated_at <> sla_checked_at"


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        for name in _TIMES:
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sla_policy", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sla_state", sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
        batch_op.add_column(sa.Column("rating", sa.Integer(), nullable=True))
    op.execute("UPDATE conversations SET sla_checked_at = updated_at")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index("ix_conversations_next_due_at", ["next_due_at"], unique=False)
        batch_op.create_index("ix_conversations_sla_dirty", ["id"], unique=False,
                              sqlite_where=sa.text(DIRTY), postgresql_where=sa.text(DIRTY))

    op.create_table(
        "acknowledgements",
        sa.Column("id", ID, nullable=False),
        sa.Column("conversation_id", ID, nullable=False),
        sa.Column("message_id", ID, nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["conversation_id"], ["conversations.id"],
                                name=op.f("fk_acknowledgements_conversation_id_conversations")),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"],
                                name=op.f("fk_acknowledgements_message_id_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acknowledgements")),
        sa.UniqueConstraint("conversation_id", name="uq_acknowledgements_conversation_id"),
    )
    with op.batch_alter_table("acknowledgements", schema=None) as batch_op:
        batch_op.create_index("ix_acknowledgements_recipient_created_at",
                              ["recipient", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("acknowledgements", schema=None) as batch_op:
        batch_op.drop_index("ix_acknowledgements_recipient_created_at")
    op.drop_table("acknowledgements")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_sla_dirty")
        batch_op.drop_index("ix_conversations_next_due_at")
        for name in ("rating", "sla_state", "sla_policy", *reversed(_TIMES)):
            batch_op.drop_column(name)
