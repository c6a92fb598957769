"""Received messages indexed by (state, id): claiming the oldest waiting walks the index.

Processing claims ``WHERE state = 'received' … ORDER BY id LIMIT n``. With the index on
(state, claim_expires_at) SQLite sorted every waiting message for each claim, in the write
transaction: a cost that grew with the backlog (a 20,000-message mailbox backfill sorted
20,000 rows per batch of 32). On (state, id) the claim reads the first rows in order.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02 22:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_received_messages_state_claim_expires_at"))
        batch_op.create_index(
            batch_op.f("ix_received_messages_state_id"), ["state", "id"], unique=False
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_received_messages_state_id"))
        batch_op.create_index(
            batch_op.f("ix_received_messages_state_claim_expires_at"),
            ["state", "claim_expires_at"],
            unique=False,
        )
