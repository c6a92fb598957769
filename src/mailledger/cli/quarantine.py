"""``mailledger quarantine list | release | delete``: messages a rule held back, and their fate."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, group, out, session_scope
from mailledger.cli.listing import emit_list, list_flags, row_limit
from mailledger.cli.messages import MESSAGE_COLUMNS, MESSAGE_REF_HELP

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    """List quarantined messages; a table stops at --limit and says so."""
    from mailledger.store import queries
    from mailledger.store.models import MessageState

    state = MessageState.QUARANTINED
    with session_scope(settings) as session:
        emit_list(
            args,
            queries.iter_messages(session, state, limit=row_limit(args)),
            MESSAGE_COLUMNS,
            empty="quarantine is empty",
            total=lambda: queries.count_messages(session, state),
        )
    return EXIT_OK


def cmd_quarantine_release(args: argparse.Namespace, settings: Settings) -> int:
    """Send a quarantined message back to processing (``--force``: record it regardless)."""
    from mailledger.store import quarantine

    with session_scope(settings) as session:
        message = quarantine.release(session, args.id, force=args.force)
        name = f"message {message.id} (queue ID {message.queue_id})"
    how = " (forced: it will be recorded despite the policy)" if args.force else ""
    out(f"{name} released for processing{how}")
    return EXIT_OK


def cmd_quarantine_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a quarantined message and, unless shared, its raw bytes."""
    from mailledger.store import quarantine, queries
    from mailledger.store.blobbackend import open_blob_backend

    with session_scope(settings) as session:
        message = queries.get_message(session, args.id)
        name = f"message {message.id} (queue ID {message.queue_id})"
        removed = quarantine.delete(session, open_blob_backend(settings), message.id)
    blob = "and its raw message" if removed else "(its raw bytes are still referenced)"
    out(f"{name} deleted {blob}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``quarantine`` command group to the CLI."""
    quar = group(commands, "quarantine", "messages held back by a rule")
    list_flags(command(quar, "list", cmd_quarantine_list, "list quarantined"))
    sub = command(quar, "release", cmd_quarantine_release, "process a message again")
    sub.add_argument("id", metavar="MESSAGE", help=MESSAGE_REF_HELP)
    sub.add_argument("--force", action="store_true", help="record it despite the policy")
    sub = command(quar, "delete", cmd_quarantine_delete, "delete a message for good")
    sub.add_argument("id", metavar="MESSAGE", help=MESSAGE_REF_HELP)
