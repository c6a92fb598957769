"""Tenants and staff can be disabled, and a staff member removed with his history kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:55:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("removed_at")
        batch_op.drop_column("disabled_at")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
