"""API tokens; activities get a feed position, updated_at and a structured "regarding".

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailledger.store.feedposition import SQLITE_DROP_TRIGGER, SQLITE_TRIGGER

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL's position of a new activity: the id of the transaction inserting it
# (store/feedposition.py), also as the column's default for inserts outside our models.
_PG_POSITION = "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)"


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("read_only", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_tokens_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "feed_clock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_clock")),
    )
    # Columns added in place (ALTER TABLE ADD COLUMN, no copy of the table), with constant
    # defaults for the rows already there.
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("regarding_type", sa.String(length=40), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("regarding_ref", sa.String(length=200), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column(
                "updated_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default="1970-01-01 00:00:00",
            )
        )
        batch_op.add_column(
            sa.Column("feed_position", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.execute("UPDATE activities SET updated_at = created_at")
    if op.get_bind().dialect.name == "sqlite":
        # Existing activities keep their id order; the counter goes on from the highest.
        op.execute("UPDATE activities SET feed_position = id")
        op.execute(
            "INSERT INTO feed_clock (id, position) SELECT 1, COALESCE(MAX(id), 0) FROM activities"
        )
        op.execute(SQLITE_TRIGGER)
    else:
        # Existing activities sit at 0, in id order, before every transaction id to come.
        op.alter_column("activities", "feed_position", server_default=sa.text(_PG_POSITION))
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_activities_tenant_id_feed_position_id"),
            ["tenant_id", "feed_position", "id"],
            unique=False,
        )


def downgrade() -> None:
    """Revert this revision."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP_TRIGGER)
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_activities_tenant_id_feed_position_id"))
        batch_op.drop_column("feed_position")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("regarding_ref")
        batch_op.drop_column("regarding_type")
    op.drop_table("feed_clock")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_tenant_id"))
    op.drop_table("api_tokens")
