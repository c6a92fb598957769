"""``mailledger storage migrate --to database|s3|filesystem``: move blobs between backends.

Runs beside serving nodes (no downtime): copy while they serve from the old backend, switch
``[storage] backend`` and reload them, run it again to catch what arrived in between, then
once more with ``--remove-source`` to delete the old copies (store/blobmigrate.py).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, EXIT_REFUSED, CommandError, command, group, json_flag, out

if TYPE_CHECKING:
    from mailledger.config import Settings
    from mailledger.store.blobmigrate import MigrationReport

BACKENDS = ("filesystem", "database", "s3")
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
    storage = group(commands, "storage", "move raw messages and attachments between backends")
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
