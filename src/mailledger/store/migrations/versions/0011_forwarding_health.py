"""Forwarding health: scheduled round-trip rechecks and silence.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "forwarding_health",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"], ["staff.id"], name=op.f("fk_forwarding_health_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forwarding_health")),
        sa.UniqueConstraint("staff_id", name=op.f("uq_forwarding_health_staff_id")),
    )  # fmt: skip
    op.create_table(
        "periodic_runs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_periodic_runs")),
    )
    # When a staff member's forward last brought mail in (forwarding/health.py).
    with op.batch_alter_table("message_routes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_message_routes_staff_id_kind"), ["staff_id", "kind"], unique=False
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("message_routes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_message_routes_staff_id_kind"))
    op.drop_table("periodic_runs")
    op.drop_table("forwarding_health")
