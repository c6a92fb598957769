"""Blob storage in the database: raw messages, spool files and attachments in chunks.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "blobs",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_blobs")),
    )
    op.create_table(
        "blob_chunks",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["hash"],
            ["blobs.hash"],
            name=op.f("fk_blob_chunks_hash_blobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("hash", "seq", name=op.f("pk_blob_chunks")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("blob_chunks")
    op.drop_table("blobs")
