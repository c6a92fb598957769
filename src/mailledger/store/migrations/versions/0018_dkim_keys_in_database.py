"""DKIM private keys sealed in the database, so no node needs a shared disk.

``dkim_keys`` gains ``private_key`` (sealed with ``[secrets] key_file``) and ``activated_at``
(when a key became the one signing uses); ``private_key_path`` becomes optional, because keys
made from now on have no file. Reading the old key files and sealing them needs the secrets
key and the files themselves, which a node may lack, so this script only changes the schema:
``mailledger db upgrade`` then runs the import (``domains.keyimport``), as does ``mailledger
dkim import`` on the node that holds the files.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 13:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A domain's first key became active when it was made; a later active key when rotation
# switched to it, which happens once the check verifies it: verified_at is the best record.
_BACKFILL_ACTIVATED = """
UPDATE dkim_keys SET activated_at = CASE
    WHEN EXISTS (
        SELECT 1 FROM dkim_keys AS older
        WHERE older.domain = dkim_keys.domain AND older.created_at < dkim_keys.created_at
    ) THEN COALESCE(verified_at, created_at)
    ELSE created_at
END
WHERE active
"""


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("private_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.alter_column("private_key_path", existing_type=sa.Text(), nullable=True)
    op.execute(_BACKFILL_ACTIVATED)


def downgrade() -> None:
    """Revert this revision, refusing while a key exists only in the database.

    Before 0018 a key was a file; a key made since has none, and dropping its column would
    destroy it (and every signature it made would stop verifying once re-keyed).
    """
    connection = op.get_bind()
    only_here = connection.execute(
        sa.text("SELECT domain, selector FROM dkim_keys WHERE private_key_path IS NULL")
    ).all()
    if only_here:
        names = ", ".join(f"{selector}._domainkey.{domain}" for domain, selector in only_here)
        raise RuntimeError(
            f"DKIM keys {names} exist only in the database (made after revision 0018); "
            "a downgrade would destroy them"
        )
    with op.batch_alter_table("dkim_keys", schema=None) as batch_op:
        batch_op.alter_column("private_key_path", existing_type=sa.Text(), nullable=False)
        batch_op.drop_column("activated_at")
        batch_op.drop_column("private_key")
