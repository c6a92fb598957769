"""Received messages remember the staff member who submitted them through the relay.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:02:41.118204
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("submitted_by_staff_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_received_messages_submitted_by_staff_id_staff"),
            "staff",
            ["submitted_by_staff_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_received_messages_submitted_by_staff_id_staff"), type_="foreignkey"
        )
        batch_op.drop_column("submitted_by_staff_id")
