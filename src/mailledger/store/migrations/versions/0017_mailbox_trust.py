"""Mailbox accounts: which provider's Authentication-Results are trusted.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 13:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("mailbox_accounts", schema=None) as batch_op:
        # Existing plain IMAP accounts trust no Authentication-Results until one is configured
        # (`account set ID --authserv-id ID`): what their mail claimed was never checked.
        batch_op.add_column(
            sa.Column("authserv_id", sa.String(length=255), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("mailbox_accounts", schema=None) as batch_op:
        batch_op.drop_column("authserv_id")
