"""``mailledger never-log add``: addresses and domains whose mail is never recorded."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, group, out, session_scope

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


def register(commands: Any) -> None:
    """Add the ``never-log`` command group to the CLI."""
    never_log = group(commands, "never-log", "addresses and domains never recorded")
    sub = command(never_log, "add", cmd_never_log_add, "never record an address or domain")
    sub.add_argument("tenant")
    sub.add_argument("pattern", help="an address, or a domain")
    sub.add_argument("--staff", metavar="USER", help="only for this staff member")
