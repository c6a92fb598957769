"""``mailledger forwarding check-health [--tenant T]``: the forwarding health pass, now.

``serve`` runs the same pass every ``[forwarding] interval_seconds``; this runs one at once
(after fixing a forward, or from cron on a node that does not serve) and prints what changed:
checks sent, forwards that broke (and the mail that told their owner), forwards proven again.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    command,
    err,
    group,
    json_flag,
    out,
    session_scope,
    sessions_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_forwarding_check_health(args: argparse.Namespace, settings: Settings) -> int:
    """Run one forwarding health pass for every tenant, or one; print what changed."""
    import asyncio

    from mailledger.dnsauth.resolver import Resolver
    from mailledger.forwarding.health import run_pass
    from mailledger.store import directory
    from mailledger.store.blobbackend import open_blob_backend

    tenant_id = None
    if args.tenant:
        with session_scope(settings) as session:
            tenant_id = directory.find_tenant(session, args.tenant).id
    with sessions_scope(settings) as sessions:
        report = asyncio.run(
            run_pass(
                sessions,
                open_blob_backend(settings),
                settings,
                Resolver(settings.dns),
                owner=f"cli:{settings.service.node_id}",
                tenant_id=tenant_id,
            )
        )
    if not report.ran:
        err("another node is running the forwarding health pass right now; try again shortly")
        return EXIT_REFUSED
    if args.json:
        out(json.dumps([c.as_dict() for c in report.changes], indent=2, ensure_ascii=False))
        return EXIT_OK
    for change in report.changes:
        out(str(change))
    if not report.changes:
        out("no changes: every proven forward is as it was, and no check was due")
    if report.changes and any(c.mailed_to or c.check_sent_to for c in report.changes):
        out("mail queued; `mailledger serve` delivers it")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``forwarding`` command group to the CLI."""
    forwarding = group(commands, "forwarding", "whether proven forwards still work")
    sub = json_flag(
        command(
            forwarding,
            "check-health",
            cmd_forwarding_check_health,
            "recheck due forwards, find silent or broken ones, mail their owners the fix",
        )
    )
    sub.add_argument("--tenant", metavar="T", help="only this tenant's staff")
