"""``mailledger activities list | show``: the correspondence mailledger recorded."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, group, json_flag, session_scope, show
from mailledger.cli.listing import emit_list, list_flags, row_limit

if TYPE_CHECKING:
    from mailledger.config import Settings

ACTIVITY_COLUMNS = ["id", "tenant", "occurred_at", "direction", "staff", "from", "subject"]


def cmd_activities_list(args: argparse.Namespace, settings: Settings) -> int:
    """List recorded activities, newest first; a table stops at --limit and says so."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant) if args.tenant else None
        emit_list(
            args,
            queries.iter_activities(session, tenant, limit=row_limit(args)),
            ACTIVITY_COLUMNS,
            empty="no activities",
            total=lambda: queries.count_activities(session, tenant),
        )
    return EXIT_OK


def cmd_activities_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one activity in full."""
    from mailledger.store import queries

    with session_scope(settings) as session:
        record = queries.activity(session, args.id)
    show(
        [record],
        {
            "participants": ["role", "kind", "address", "name"],
            "sources": ["message", "queue_id", "kind", "rcpt", "staff", "mail_from"],
            "attachments": ["filename", "content_type", "size", "inline"],
            "trace": ["message", "time", "step", "decision", "detail"],
        },
        as_json=args.json,
    )
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``activities`` command group to the CLI."""
    acts = group(commands, "activities", "recorded email")
    sub = command(acts, "list", cmd_activities_list, "list activities, newest first")
    sub.add_argument("--tenant", metavar="T")
    list_flags(sub)
    sub = json_flag(command(acts, "show", cmd_activities_show, "show one activity"))
    sub.add_argument("id", type=int)
