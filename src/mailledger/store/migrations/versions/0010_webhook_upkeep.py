"""Webhook upkeep: secrets encrypted at rest, failing endpoints, and the feed's indexes.

Webhook signing secrets are sealed with ``[secrets] key_file`` (``store.secretbox``): the
columns widen to hold a sealed value, and the rows written in clear before are sealed here
when ``mailledger db upgrade`` passes the key file (``store.migrate.SECRETS_KEY_FILE``), in
the same transaction as the schema change. Run without it (a programmatic upgrade) the rows
stay as they were and are sealed on each endpoint's next use; they sign either way.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import context, op

from mailledger.store.secretbox import SecretBox, is_sealed

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The attribute store.migrate.SECRETS_KEY_FILE names (copied: a script keeps working when
# the code that runs it changes).
_KEY_FILE_ATTRIBUTE = "secrets_key_file"

_ENDPOINTS = sa.table(
    "webhook_endpoints",
    sa.column("id", sa.Integer()),
    sa.column("secret", sa.String()),
    sa.column("previous_secret", sa.String()),
)

# (table, index name, columns)
_INDEXES = (
    ("attachments", "ix_attachments_activity_id", ["activity_id"]),
    ("contacts", "ix_contacts_company_id", ["company_id"]),
    ("activities", "ix_activities_tenant_id_occurred_at_id", ["tenant_id", "occurred_at", "id"]),
)


def _box() -> SecretBox | None:
    path = context.config.attributes.get(_KEY_FILE_ATTRIBUTE)
    return SecretBox.from_file(path) if path else None


def _rewrite_secrets(change: Callable[[str], str]) -> None:
    """Apply ``change`` to every endpoint's secret and previous secret, where it changes."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_ENDPOINTS.c.id, _ENDPOINTS.c.secret, _ENDPOINTS.c.previous_secret)
    ).all()
    for ident, secret, previous in rows:
        new_secret, new_previous = change(secret), change(previous) if previous else previous
        if (new_secret, new_previous) != (secret, previous):
            connection.execute(
                sa.update(_ENDPOINTS)
                .where(_ENDPOINTS.c.id == ident)
                .values(secret=new_secret, previous_secret=new_previous)
            )


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        for column in ("secret", "previous_secret"):
            batch_op.alter_column(
                column,
                existing_type=sa.String(length=100),
                type_=sa.String(length=500),
                existing_nullable=False,
            )
        batch_op.add_column(
            sa.Column("failing_notified_at", sa.DateTime(timezone=True), nullable=True)
        )
    box = _box()
    if box is not None:
        _rewrite_secrets(lambda value: value if is_sealed(value) else box.seal(value))
    for table, name, columns in _INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    """Revert this revision: the secrets go back to clear text, which needs the key file."""
    for table, name, _columns in reversed(_INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
    box = _box()

    def opened(value: str) -> str:
        if not is_sealed(value):
            return value
        if box is None:
            raise RuntimeError(
                "webhook secrets are sealed: downgrade with [secrets] key_file "
                "(store.migrate.downgrade(..., secrets_key_file=...)) to open them"
            )
        return box.open(value)

    _rewrite_secrets(opened)
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_column("failing_notified_at")
        for column in ("previous_secret", "secret"):
            batch_op.alter_column(
                column,
                existing_type=sa.String(length=500),
                type_=sa.String(length=100),
                existing_nullable=False,
            )
