"""Sending from the CRM: staff signatures and each tenant's system sender.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("signature_text", sa.Text(), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("signature_html", sa.Text(), nullable=False, server_default="")
        )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("system_sender", sa.String(length=320), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("system_sender")
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("signature_html")
        batch_op.drop_column("signature_text")
