"""``mailledger web link TENANT USERNAME``: a one-time sign-in URL printed for the operator."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, EXIT_REFUSED, command, err, group, out, session_scope

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_web_link(args: argparse.Namespace, settings: Settings) -> int:
    """Print a sign-in link for a staff member; it works once, for 15 minutes."""
    from mailledger.store import directory, websessions
    from mailledger.web.pages.signinmail import signin_url

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        if staff.disabled_at is not None or tenant.disabled_at is not None:
            who = f"staff member {staff.username}" if staff.disabled_at else f"tenant {tenant.name}"
            err(f"{who} is disabled; run `mailledger staff enable` or `tenant enable` first")
            return EXIT_REFUSED
        token = websessions.create_link(session, staff)
    minutes = int(websessions.LINK_LIFETIME.total_seconds() // 60)
    out(signin_url(settings.http.public_url, token))
    err(f"works once, within {minutes} minutes, for {args.username} of {args.tenant}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``web`` command group to the CLI."""
    web = group(commands, "web", "the web pages")
    sub = command(web, "link", cmd_web_link, "print a one-time sign-in link for a staff member")
    sub.add_argument("tenant")
    sub.add_argument("username")
