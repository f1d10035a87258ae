"""oauth_cc: OAuth 2.0 refresh tokens for the mailbox and the relay; a conversation's CC list

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06

``oauth_tokens`` keeps one row per signed-in account (``frontdesk oauth login``): the provider,
the refresh token encrypted with the key from the environment (never in clear), the scopes
granted, and the last refresh's time and error (a revoked consent shows in ``/readyz``).
Conversations get ``cc``: the addresses a customer copied, kept on staff replies (reply-all).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_tokens",
        sa.Column("account", sa.String(length=320), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account", name="pk_oauth_tokens"),
    )
    # plain ALTER TABLE ADD COLUMN on both stores (no table copy: other tables refer to it)
    op.add_column("conversations", sa.Column("cc", sa.JSON(), nullable=False,
                                             server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_column("cc")
    op.drop_table("oauth_tokens")
