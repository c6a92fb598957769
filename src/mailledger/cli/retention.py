"""``mailledger retention run [--dry-run]``: the retention pass by hand (cron, before a backup)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, group, json_flag, out, sessions_scope

if TYPE_CHECKING:
    from mailledger.config import Settings
    from mailledger.service.retention import RetentionReport


def cmd_retention_run(args: argparse.Namespace, settings: Settings) -> int:
    """Delete what ``[retention]`` says has expired; ``--dry-run`` only counts it."""
    from mailledger.service.retention import RetentionReport, enabled, run_retention
    from mailledger.store.blobbackend import open_blob_backend

    policy = settings.retention
    if not enabled(policy):
        if args.json:
            # The same shape as a pass that ran, so a script reads every outcome alike.
            out(json.dumps([_as_row(False, RetentionReport(dry_run=args.dry_run))]))
        else:
            out(
                "retention is off: [retention] raw_days, quarantine_days, webhook_days and "
                "sweep_days are all 0"
            )
        return EXIT_OK
    with sessions_scope(settings) as sessions:
        report = run_retention(sessions, open_blob_backend(settings), policy, dry_run=args.dry_run)
    if args.json:
        out(json.dumps([_as_row(True, report)]))  # a one-element array, like every --json
    else:
        out(str(report))
    return EXIT_OK


def _as_row(enabled: bool, report: RetentionReport) -> dict[str, Any]:
    return {
        "enabled": enabled,
        "dry_run": report.dry_run,
        "raw_messages": report.raw_messages,
        "raw_blobs": report.raw_blobs,
        "quarantined": report.quarantined,
        "webhook_events": report.webhook_events,
        "webhook_attempts": report.webhook_attempts,
        "unnamed_blobs": report.unnamed_blobs,
        "sweep_refused": report.sweep_refused or None,
    }


def register(commands: Any) -> None:
    """Add the ``retention`` command group to the CLI."""
    retention = group(
        commands, "retention", "delete raw and quarantined mail, old webhook logs, past [retention]"
    )
    sub = json_flag(command(retention, "run", cmd_retention_run, "run one retention pass now"))
    sub.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
