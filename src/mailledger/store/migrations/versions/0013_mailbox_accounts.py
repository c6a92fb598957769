"""Mailbox sync: accounts, folder state and the error log.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "mailbox_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "imap", "google", "microsoft", name="account_kind", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("security", sa.String(length=16), nullable=False),
        sa.Column("allow_invalid_cert", sa.Boolean(), nullable=False),
        sa.Column("login", sa.String(length=320), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("access_token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("oauth_state", sa.String(length=64), nullable=True),
        sa.Column("oauth_verifier", sa.Text(), nullable=False),
        sa.Column("oauth_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "mode",
            sa.Enum("sweep", "folder", name="sync_mode", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("extra_folders", sa.JSON(), nullable=False),
        sa.Column("source_folder", sa.String(length=255), nullable=False),
        sa.Column("processed_folder", sa.String(length=255), nullable=False),
        sa.Column("shared", sa.Boolean(), nullable=False),
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
        sa.Column("messages_synced", sa.Integer(), nullable=False),
        sa.Column("sent_copied_through", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_mailbox_accounts_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_mailbox_accounts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_accounts")),
        sa.UniqueConstraint("oauth_state", name=op.f("uq_mailbox_accounts_oauth_state")),
    )
    with op.batch_alter_table("mailbox_accounts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_accounts_staff_id"), ["staff_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_mailbox_accounts_status_retry_at"), ["status", "retry_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_mailbox_accounts_tenant_id"), ["tenant_id"], unique=False
        )

    op.create_table(
        "mailbox_daily_counts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_mailbox_daily_counts_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_daily_counts")),
        sa.UniqueConstraint("staff_id", "day", name=op.f("uq_mailbox_daily_counts_staff_id_day")),
    )
    op.create_table(
        "mailbox_errors",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("what", sa.Text(), nullable=False),
        sa.Column("fix", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["mailbox_accounts.id"],
            name=op.f("fk_mailbox_errors_account_id_mailbox_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_errors")),
    )
    with op.batch_alter_table("mailbox_errors", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_errors_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "mailbox_folders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=1000), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("highest_uid", sa.BigInteger(), nullable=False),
        sa.Column("highestmodseq", sa.BigInteger(), nullable=True),
        sa.Column("uidnext", sa.BigInteger(), nullable=True),
        sa.Column("messages", sa.Integer(), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["mailbox_accounts.id"],
            name=op.f("fk_mailbox_folders_account_id_mailbox_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_folders")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_mailbox_folders_account_id_name")),
    )
    with op.batch_alter_table("mailbox_folders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_folders_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "mailbox_viewers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["mailbox_accounts.id"],
            name=op.f("fk_mailbox_viewers_account_id_mailbox_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["staff_id"],
            ["staff.id"],
            name=op.f("fk_mailbox_viewers_staff_id_staff"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_viewers")),
        sa.UniqueConstraint(
            "account_id", "staff_id", name=op.f("uq_mailbox_viewers_account_id_staff_id")
        ),
    )
    with op.batch_alter_table("mailbox_viewers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_viewers_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "mailbox_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(length=1000), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("message_id_header", sa.String(length=998), nullable=False),
        sa.Column(
            "received_message_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=True,
        ),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["mailbox_accounts.id"],
            name=op.f("fk_mailbox_messages_account_id_mailbox_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["received_message_id"],
            ["received_messages.id"],
            name=op.f("fk_mailbox_messages_received_message_id_received_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_messages")),
        sa.UniqueConstraint(
            "account_id",
            "folder",
            "uidvalidity",
            "uid",
            name=op.f("uq_mailbox_messages_account_id_folder_uidvalidity_uid"),
        ),
    )
    with op.batch_alter_table("mailbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_messages_account_id_message_id_header"),
            ["account_id", "message_id_header"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_mailbox_messages_received_message_id"),
            ["received_message_id"],
            unique=False,
        )

    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mailbox_account_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_received_messages_mailbox_account_id"),
            ["mailbox_account_id"],
            unique=False,
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_received_messages_mailbox_account_id_mailbox_accounts"),
            "mailbox_accounts",
            ["mailbox_account_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("received_messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_received_messages_mailbox_account_id_mailbox_accounts"),
            type_="foreignkey",
        )
        batch_op.drop_index(batch_op.f("ix_received_messages_mailbox_account_id"))
        batch_op.drop_column("mailbox_account_id")

    with op.batch_alter_table("mailbox_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_messages_received_message_id"))
        batch_op.drop_index(batch_op.f("ix_mailbox_messages_account_id_message_id_header"))

    op.drop_table("mailbox_messages")
    with op.batch_alter_table("mailbox_viewers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_viewers_account_id"))

    op.drop_table("mailbox_viewers")
    with op.batch_alter_table("mailbox_folders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_folders_account_id"))

    op.drop_table("mailbox_folders")
    with op.batch_alter_table("mailbox_errors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_errors_account_id"))

    op.drop_table("mailbox_errors")
    op.drop_table("mailbox_daily_counts")
    with op.batch_alter_table("mailbox_accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_accounts_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_mailbox_accounts_status_retry_at"))
        batch_op.drop_index(batch_op.f("ix_mailbox_accounts_staff_id"))

    op.drop_table("mailbox_accounts")
