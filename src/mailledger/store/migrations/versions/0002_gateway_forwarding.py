"""Tenant gateway settings and forwarding confirmations.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:04:12.597100
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "forwarding_confirmations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column(
            "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("link", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handback_state", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["received_messages.id"],
            name=op.f("fk_forwarding_confirmations_message_id_received_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_forwarding_confirmations_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_forwarding_confirmations_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_forwarding_confirmations")),
    )
    with op.batch_alter_table("forwarding_confirmations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_forwarding_confirmations_staff_id"), ["staff_id"], unique=False
        )

    with op.batch_alter_table("tenants", schema=None) as batch_op:
        # Existing tenants get no gateway: an empty list and an empty authserv-id.
        batch_op.add_column(
            sa.Column("gateway_networks", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column(
                "gateway_authserv_id", sa.String(length=255), nullable=False, server_default=""
            )
        )


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("gateway_authserv_id")
        batch_op.drop_column("gateway_networks")

    with op.batch_alter_table("forwarding_confirmations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forwarding_confirmations_staff_id"))

    op.drop_table("forwarding_confirmations")
