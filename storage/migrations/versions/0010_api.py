"""api: REST API tokens and idempotency keys; conversation tags and resolution notes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

``api_tokens`` keeps each token's public id, name, scope and the SHA-256 of its secret;
``api_idempotency`` keeps a POST's ``Idempotency-Key`` with its first answer (per token).
Conversations get ``tags`` (a JSON list, empty for the existing ones) and ``resolution_note``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE ADD COLUMN on both stores (no table copy: other tables refer to it)
    op.add_column("conversations", sa.Column("tags", sa.JSON(), nullable=False,
                                             server_default=sa.text("'[]'")))
    op.add_column("conversations", sa.Column("resolution_note", sa.Text(), nullable=True))
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=256), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
    )
    op.create_table(
        "api_idempotency",
        sa.Column("token_id", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_id", "key", name="pk_api_idempotency"),
    )
    op.create_index("ix_api_idempotency_created_at", "api_idempotency", ["created_at"])
    op.create_index("ix_api_idempotency_conversation_id", "api_idempotency", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_api_idempotency_conversation_id", table_name="api_idempotency")
    op.drop_index("ix_api_idempotency_created_at", table_name="api_idempotency")
    op.drop_table("api_idempotency")
    op.drop_table("api_tokens")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("resolution_note")
        batch_op.drop_column("tags")
