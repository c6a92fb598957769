"""``mailledger never-log add | list | remove``: addresses and domains whose mail is never
recorded, tenant-wide or for one staff member."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, emit, group, json_flag, out, session_scope

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_never_log_add(args: argparse.Namespace, settings: Settings) -> int:
    """Never record mail with an address or domain, tenant-wide or for one staff member."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.staff) if args.staff else None
        row = directory.add_never_log(session, tenant, args.pattern, staff=staff)
        scope = f"staff member {staff.username}" if staff else f"tenant {tenant.name}"
        out(f"never log {row.pattern} for {scope}")
    return EXIT_OK


def cmd_never_log_list(args: argparse.Namespace, settings: Settings) -> int:
    """The tenant-wide list; ``--staff U`` one member's; ``--every`` all of them."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.staff) if args.staff else None
        rows = queries.never_log(session, tenant, staff, every_scope=args.every)
    columns = ["pattern", "kind", "staff"]
    emit(rows, columns, as_json=args.json, empty="the never-log list is empty")
    return EXIT_OK


def cmd_never_log_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Take an address or domain off a never-log list: its mail is recorded again."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.staff) if args.staff else None
        pattern = directory.remove_never_log(session, tenant, args.pattern, staff=staff)
        scope = f"staff member {staff.username}" if staff else f"tenant {tenant.name}"
        record = {"pattern": pattern, "staff": staff.username if staff else None}
    if args.json:
        out(json.dumps([record | {"removed": True}], indent=2))
    else:
        out(f"{pattern} removed from the never-log list of {scope}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``never-log`` command group to the CLI."""
    never_log = group(commands, "never-log", "addresses and domains never recorded")
    sub = command(never_log, "add", cmd_never_log_add, "never record an address or domain")
    sub.add_argument("tenant")
    sub.add_argument("pattern", help="an address, or a domain")
    sub.add_argument("--staff", metavar="USER", help="only for this staff member")
    sub = json_flag(command(never_log, "list", cmd_never_log_list, "list never-log entries"))
    sub.add_argument("tenant")
    scope = sub.add_mutually_exclusive_group()
    scope.add_argument("--staff", metavar="USER", help="this staff member's list")
    scope.add_argument("--every", action="store_true", help="tenant-wide and every member's")
    sub = json_flag(
        command(never_log, "remove", cmd_never_log_remove, "record an address or domain again")
    )
    sub.add_argument("tenant")
    sub.add_argument("pattern", help="an address, or a domain")
    sub.add_argument("--staff", metavar="USER", help="from this staff member's list")
