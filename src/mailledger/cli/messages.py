"""``mailledger messages list | show | trace``: every message received, and what became of it.

A message is named by its row number, its queue ID (from the ``250`` reply and every log line)
or its Message-ID, ``<…>`` optional (``mailledger.store.queries.get_message``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, emit, group, json_flag, session_scope, show
from mailledger.cli.listing import emit_list, list_flags, row_limit

if TYPE_CHECKING:
    from mailledger.config import Settings

MESSAGE_COLUMNS = ["id", "queue_id", "received_at", "state", "mail_from", "rcpt_to", "reason"]
MESSAGE_REF_HELP = "row number, queue ID or Message-ID (<…> optional)"

# The values of ``mailledger.store.models.MessageState`` for ``--state``, copied so that
# building the parser needs no SQLAlchemy (tests/unit/test_cli_startup.py keeps the two equal).
MESSAGE_STATES = ("received", "processed", "quarantined", "failed")


def cmd_messages_list(args: argparse.Namespace, settings: Settings) -> int:
    """List received messages with their state and reason; a table stops at --limit."""
    from mailledger.store import queries
    from mailledger.store.models import MessageState

    state = MessageState(args.state) if args.state else None
    with session_scope(settings) as session:
        emit_list(
            args,
            queries.iter_messages(session, state, limit=row_limit(args)),
            MESSAGE_COLUMNS,
            empty="no messages",
            total=lambda: queries.count_messages(session, state),
        )
    return EXIT_OK


def cmd_messages_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one received message: session facts, routes and trace."""
    from mailledger.store import queries

    with session_scope(settings) as session:
        record = queries.message(session, args.id)
    show(
        [record],
        {
            "routes": ["rcpt", "kind", "tenant", "staff", "outcome", "activity"],
            "trace": ["time", "step", "decision", "detail"],
        },
        as_json=args.json,
    )
    return EXIT_OK


def cmd_messages_trace(args: argparse.Namespace, settings: Settings) -> int:
    """What each processing step decided about a message, and why."""
    from mailledger.store import queries

    with session_scope(settings) as session:
        rows = queries.trace(session, args.id)
    columns = ["time", "step", "decision", "detail"]
    emit(rows, columns, as_json=args.json, empty="no trace entries yet")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``messages`` command group to the CLI."""
    msgs = group(commands, "messages", "every message received")
    sub = command(msgs, "list", cmd_messages_list, "list received messages, newest first")
    sub.add_argument("--state", choices=MESSAGE_STATES)
    list_flags(sub)
    sub = json_flag(command(msgs, "show", cmd_messages_show, "show one received message"))
    sub.add_argument("id", metavar="MESSAGE", help=MESSAGE_REF_HELP)
    sub = json_flag(command(msgs, "trace", cmd_messages_trace, "what each step decided"))
    sub.add_argument("id", metavar="MESSAGE", help=MESSAGE_REF_HELP)
