"""Calendar sync: calendar accounts, events and their sync state.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "calendar_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("caldav", "google", name="calendar_kind", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("calendar_url", sa.String(length=2000), nullable=False),
        sa.Column("calendar_name", sa.String(length=255), nullable=False),
        sa.Column("login", sa.String(length=320), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("access_token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("oauth_state", sa.String(length=64), nullable=True),
        sa.Column("oauth_verifier", sa.Text(), nullable=False),
        sa.Column("oauth_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "privacy",
            sa.Enum("public", "private", name="calendar_privacy", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("sync_token", sa.Text(), nullable=False),
        sa.Column("ctag", sa.Text(), nullable=False),
        sa.Column("compared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "syncing",
                "enabled",
                "error",
                "connection",
                "reconnect",
                name="account_status",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("announced_status", sa.String(length=16), nullable=False),
        sa.Column("mailed_status", sa.String(length=16), nullable=False),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events_synced", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_calendar_accounts_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_calendar_accounts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_accounts")),
        sa.UniqueConstraint("oauth_state", name=op.f("uq_calendar_accounts_oauth_state")),
    )
    with op.batch_alter_table("calendar_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calendar_accounts_staff_id"), ["staff_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_calendar_accounts_status_retry_at"), ["status", "retry_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_calendar_accounts_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "calendar_errors",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("fix", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["calendar_accounts.id"],
            name=op.f("fk_calendar_errors_account_id_calendar_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_errors")),
    )
    with op.batch_alter_table("calendar_errors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calendar_errors_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "calendar_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("href", sa.String(length=2000), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=False),
        sa.Column("uid", sa.String(length=500), nullable=False),
        sa.Column("recurrence_id", sa.String(length=40), nullable=False),
        sa.Column(
            "origin",
            sa.Enum("crm", "calendar", name="event_origin", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("recurring", sa.Boolean(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tzid", sa.String(length=64), nullable=False),
        sa.Column("all_day", sa.Boolean(), nullable=False),
        sa.Column("organizer", sa.String(length=320), nullable=False),
        sa.Column("attendees", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pending", sa.String(length=8), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("conflict", sa.Text(), nullable=False),
        sa.Column("activity_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["calendar_accounts.id"],
            name=op.f("fk_calendar_events_account_id_calendar_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["activity_id"],
            ["activities.id"],
            name=op.f("fk_calendar_events_activity_id_activities"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_calendar_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_events")),
        sa.UniqueConstraint(
            "account_id",
            "href",
            "recurrence_id",
            name=op.f("uq_calendar_events_account_id_href_recurrence_id"),
        ),
    )
    with op.batch_alter_table("calendar_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calendar_events_account_id_uid"), ["account_id", "uid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_calendar_events_activity_id"), ["activity_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_calendar_events_tenant_id_start_at"),
            ["tenant_id", "start_at"],
            unique=False,
        )

    op.create_table(
        "calendar_viewers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["calendar_accounts.id"],
            name=op.f("fk_calendar_viewers_account_id_calendar_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_calendar_viewers_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_viewers")),
        sa.UniqueConstraint(
            "account_id", "staff_id", name=op.f("uq_calendar_viewers_account_id_staff_id")
        ),
    )
    with op.batch_alter_table("calendar_viewers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_calendar_viewers_account_id"), ["account_id"], unique=False
        )

    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="email")
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("activities", schema=None) as batch_op:
        batch_op.drop_column("kind")

    with op.batch_alter_table("calendar_viewers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_viewers_account_id"))

    op.drop_table("calendar_viewers")
    with op.batch_alter_table("calendar_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_events_tenant_id_start_at"))
        batch_op.drop_index(batch_op.f("ix_calendar_events_activity_id"))
        batch_op.drop_index(batch_op.f("ix_calendar_events_account_id_uid"))

    op.drop_table("calendar_events")
    with op.batch_alter_table("calendar_errors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_errors_account_id"))

    op.drop_table("calendar_errors")
    with op.batch_alter_table("calendar_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_accounts_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_calendar_accounts_status_retry_at"))
        batch_op.drop_index(batch_op.f("ix_calendar_accounts_staff_id"))

    op.drop_table("calendar_accounts")
