"""``mailledger storage migrate|sweep``: move blobs between backends, remove unnamed ones.

``migrate --to database|s3|filesystem`` runs beside serving nodes (no downtime): copy while
they serve from the old backend, switch ``[storage] backend`` and reload them, run it again to
catch what arrived in between, then once more with ``--remove-source`` to delete the old
copies (store/blobmigrate.py).

``sweep [--older-than-days N] [--dry-run]`` removes bytes no row names and no writer has
stored for N days (7 by default, at least 1): what quarantined mail and crashes leave behind
(store/blobsweep.py). It too runs beside serving nodes, from cron.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    command,
    group,
    json_flag,
    out,
    sessions_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings
    from mailledger.store.blobmigrate import MigrationReport
    from mailledger.store.blobsweep import SweepReport

BACKENDS = ("filesystem", "database", "s3")
DEFAULT_SWEEP_DAYS = 7
PROGRESS_EVERY_SECONDS = 2.0


def cmd_storage_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Copy every blob into ``--to``, verified by its hash; ``--remove-source`` deletes the
    source's copies afterwards, once all are verified."""
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.blobmigrate import migrate_blobs

    configured = settings.storage.backend
    source_name = args.source or configured
    if source_name == args.to:
        raise CommandError(
            f"[storage] backend is {configured!r} already: say which backend to copy from "
            f"with --from (e.g. --from filesystem --to {args.to})"
        )
    if args.remove_source and configured != args.to:
        raise CommandError(
            f"--remove-source: [storage] backend is still {configured!r}, so nodes may still "
            f"read the blobs there. Set backend = {args.to!r}, reload every node, then run "
            f"`mailledger storage migrate --from {source_name} --to {args.to} --remove-source`"
        )
    source = open_blob_backend(settings, backend=source_name)
    target = open_blob_backend(settings, backend=args.to)
    shown = {"at": time.monotonic()}

    def progress(report: MigrationReport, _digest: str) -> None:
        if args.json or time.monotonic() - shown["at"] < PROGRESS_EVERY_SECONDS:
            return
        shown["at"] = time.monotonic()
        out(f"pass {report.passes}: {report}")

    try:
        report = migrate_blobs(source, target, remove_source=args.remove_source, progress=progress)
    finally:
        source.close()
        target.close()
    if args.json:
        out(json.dumps([_as_row(source_name, args.to, report)]))
    else:
        out(f"{source_name} -> {args.to}: {report}")
        for digest, why in sorted(report.failed.items()):
            out(f"  failed {digest}: {why}")
        if not report.failed and configured != args.to:
            out(f"next: set [storage] backend = {args.to!r}, reload every node, run this again")
        elif args.remove_source and report.failed:
            out("nothing was removed from the source: fix the failures and run this again")
    return EXIT_REFUSED if report.failed else EXIT_OK


def cmd_storage_sweep(args: argparse.Namespace, settings: Settings) -> int:
    """Remove blobs nothing names and nobody stored for ``--older-than-days``."""
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.blobsweep import SweepRefusedError, sweep_unreferenced

    blobs = open_blob_backend(settings)
    try:
        with sessions_scope(settings) as sessions:
            report = sweep_unreferenced(
                sessions, blobs, timedelta(days=args.older_than_days), dry_run=args.dry_run
            )
    except SweepRefusedError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        blobs.close()
    if args.json:
        out(json.dumps([_sweep_row(settings.storage.backend, report)]))
    else:
        out(f"{settings.storage.backend}: {report.summary()}")
    return EXIT_OK


def _sweep_row(backend: str, report: SweepReport) -> dict[str, Any]:
    return {
        "backend": backend,
        "dry_run": report.dry_run,
        "cutoff": report.cutoff.isoformat(),
        "old": report.old,
        "named": report.named,
        "removed": report.removed,
        "stored_again": report.stored_again,
        "leftovers": report.leftovers,
    }


def _as_row(source: str, target: str, report: MigrationReport) -> dict[str, Any]:
    return {
        "from": source,
        "to": target,
        "copied": report.copied,
        "already": report.already,
        "verified": report.verified,
        "bytes_copied": report.bytes_copied,
        "removed": report.removed,
        "passes": report.passes,
        "failed": report.failed,
    }


def register(commands: Any) -> None:
    """Add the ``storage`` command group to the CLI."""
    storage = group(
        commands, "storage", "move raw messages and attachments between backends, or sweep them"
    )
    sub = json_flag(
        command(storage, "migrate", cmd_storage_migrate, "copy every blob, verified by its hash")
    )
    sub.add_argument("--to", required=True, choices=BACKENDS, help="the backend to copy into")
    sub.add_argument(
        "--from",
        dest="source",
        choices=BACKENDS,
        help="the backend to copy from (default: [storage] backend)",
    )
    sub.add_argument(
        "--remove-source",
        action="store_true",
        help="delete the source's blobs once every one is verified in the target "
        "(only when [storage] backend names the target already)",
    )
    sweep = json_flag(
        command(
            storage,
            "sweep",
            cmd_storage_sweep,
            "remove stored bytes no message, activity, attachment or outbound row names",
        )
    )
    sweep.add_argument(
        "--older-than-days",
        type=_days,
        default=DEFAULT_SWEEP_DAYS,
        metavar="N",
        help=f"only bytes no writer stored for N days (default {DEFAULT_SWEEP_DAYS}, at least 1)",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="count what would be removed, remove nothing"
    )


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not days >= 1:
        raise argparse.ArgumentTypeError(
            f"{text}: at least 1 day, so bytes of mail still being received or processed are kept"
        )
    return days
