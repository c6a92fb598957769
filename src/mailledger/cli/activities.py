"""``mailledger activities list | show``: the correspondence mailledger recorded."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    CommandError,
    command,
    group,
    json_flag,
    out,
    session_scope,
    show,
)
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


def cmd_activities_regard(args: argparse.Namespace, settings: Settings) -> int:
    """Say what an activity is about in the CRM (the API's PATCH regarding), or clear it."""
    from mailledger.store.feed import FeedError
    from mailledger.store.models import Activity
    from mailledger.store.queries import NotFoundError
    from mailledger.store.regarding import Regarding, set_regarding

    if args.clear == bool(args.type):
        raise CommandError("give TYPE and REF, or --clear")
    if args.type and not args.ref:
        raise CommandError("give the CRM record's REF after its TYPE")
    value = None if args.clear else Regarding(args.type, args.ref, args.label)
    with session_scope(settings) as session:
        row = session.get(Activity, args.id)
        if row is None:
            raise NotFoundError(f"no activity {args.id}")
        try:
            row = set_regarding(
                session, row.tenant_id, row.id, value, base_url=settings.http.public_url
            )
        except FeedError as exc:
            raise CommandError(f"{exc.field}: {exc}") from exc
        shown = f"{row.regarding_type} {row.regarding_ref}".strip()
    out(f"activity {args.id} regards {shown}" if shown else f"activity {args.id} regards nothing")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``activities`` command group to the CLI."""
    acts = group(commands, "activities", "recorded email")
    sub = command(acts, "list", cmd_activities_list, "list activities, newest first")
    sub.add_argument("--tenant", metavar="T")
    list_flags(sub)
    sub = json_flag(command(acts, "show", cmd_activities_show, "show one activity"))
    sub.add_argument("id", type=int)
    sub = command(acts, "regard", cmd_activities_regard, "link an activity to a CRM record")
    sub.add_argument("id", type=int, metavar="ID")
    sub.add_argument("type", nargs="?", default="", metavar="TYPE", help="e.g. opportunity")
    sub.add_argument("ref", nargs="?", default="", metavar="REF", help="the record's id")
    sub.add_argument("--label", default="", metavar="L", help="the record's name")
    sub.add_argument("--clear", action="store_true", help="link it to nothing")
