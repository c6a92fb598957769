"""``mailledger quarantine list | release | delete``: messages a rule held back, and their fate."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    command,
    emit,
    group,
    json_flag,
    limit_flag,
    out,
    session_scope,
)
from mailledger.cli.messages import MESSAGE_COLUMNS

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    """List quarantined messages."""
    from mailledger.store import queries
    from mailledger.store.models import MessageState

    with session_scope(settings) as session:
        rows = queries.messages(session, MessageState.QUARANTINED, limit=args.limit)
    emit(rows, MESSAGE_COLUMNS, as_json=args.json, empty="quarantine is empty")
    return EXIT_OK


def cmd_quarantine_release(args: argparse.Namespace, settings: Settings) -> int:
    """Send a quarantined message back to processing (``--force``: record it regardless)."""
    from mailledger.store import quarantine

    with session_scope(settings) as session:
        quarantine.release(session, args.id, force=args.force)
    how = " (forced: it will be recorded despite the policy)" if args.force else ""
    out(f"message {args.id} released for processing{how}")
    return EXIT_OK


def cmd_quarantine_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a quarantined message and, unless shared, its raw bytes."""
    from mailledger.store import quarantine
    from mailledger.store.blobs import BlobStore

    with session_scope(settings) as session:
        removed = quarantine.delete(session, BlobStore(settings.storage.blob_dir), args.id)
    blob = "and its raw message" if removed else "(its raw bytes are still referenced)"
    out(f"message {args.id} deleted {blob}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``quarantine`` command group to the CLI."""
    quar = group(commands, "quarantine", "messages held back by a rule")
    limit_flag(json_flag(command(quar, "list", cmd_quarantine_list, "list quarantined")))
    sub = command(quar, "release", cmd_quarantine_release, "process a message again")
    sub.add_argument("id", type=int)
    sub.add_argument("--force", action="store_true", help="record it despite the policy")
    sub = command(quar, "delete", cmd_quarantine_delete, "delete a message for good")
    sub.add_argument("id", type=int)
