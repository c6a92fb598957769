"""``mailledger contact add | import | list | show | set | remove``: the people outside a
tenant it corresponds with."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    command,
    emit,
    err,
    group,
    json_flag,
    out,
    session_scope,
    sessions_scope,
    show,
)
from mailledger.cli.switches import history_choice, history_flags

if TYPE_CHECKING:
    from mailledger.config import Settings
    from mailledger.store.directory import ImportReport


def cmd_contact_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a contact."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        contact = directory.add_contact(
            session, tenant, [args.address], name=args.name, company=args.company
        )
        out(f"contact {contact.id}: {', '.join(a.address for a in contact.addresses)}")
    return EXIT_OK


class _Progress:
    """How far an import is, on one terminal line of stderr; silent when stderr is no TTY."""

    def __init__(self, path: Path, stream: TextIO) -> None:
        self.stream = stream
        self.size = path.stat().st_size if path.is_file() else 0
        self.read = 0
        self.shown = False

    def lines(self, handle: TextIO) -> Iterator[str]:
        for line in handle:
            self.read += len(line.encode("utf-8"))
            yield line

    def __call__(self, report: ImportReport) -> None:
        if not self.stream.isatty():
            return
        share = f" ({min(self.read * 100 // self.size, 100)}%)" if self.size else ""
        verb = "checked" if report.dry_run else "imported"
        rows = report.imported + len(report.errors)
        self.stream.write(
            f"\r{rows:,} row(s) read{share}: {report.imported:,} {verb}, "
            f"{len(report.errors):,} refused"
        )
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            self.stream.write("\n")


def cmd_contact_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import contacts from CSV; good rows go in, bad rows are listed by line."""
    from mailledger.store import directory

    path = Path(args.file)
    try:
        handle: TextIO = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from exc
    progress = _Progress(path, sys.stderr)
    try:
        with handle, sessions_scope(settings) as sessions:
            report = directory.import_contacts(
                sessions,
                args.tenant,
                progress.lines(handle),
                dry_run=args.dry_run,
                progress=progress,
            )
    finally:
        progress.finish()
    for line, message in report.errors:
        err(f"{path}:{line}: {message}")
    if args.dry_run:
        out(
            f"dry run: {report.imported} contact(s) would be imported, "
            f"{len(report.errors)} row(s) refused; nothing was written"
        )
    else:
        out(f"imported {report.imported} contact(s), {len(report.errors)} row(s) refused")
    return EXIT_REFUSED if report.errors else EXIT_OK


def cmd_contact_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's contacts."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        rows = queries.contacts(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "company", "addresses"], as_json=args.json, empty="no contacts")
    return EXIT_OK


def cmd_contact_show(args: argparse.Namespace, settings: Settings) -> int:
    """One contact in full."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        record = queries.contact(session, directory.find_contact(session, tenant, args.contact))
    show([record], {}, as_json=args.json)
    return EXIT_OK


def cmd_contact_set(args: argparse.Namespace, settings: Settings) -> int:
    """Fix a contact's name, company or addresses."""
    from mailledger.store import directory, queries

    if (
        args.name is None
        and args.company is None
        and not args.add_address
        and not args.remove_address
    ):
        err('say what to set: --name, --company ("" for none), --add-address, --remove-address')
        return EXIT_USAGE
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        contact = directory.find_contact(session, tenant, args.contact)
        directory.set_contact(
            session,
            tenant,
            contact,
            name=args.name,
            company=args.company,
            add_addresses=args.add_address or [],
            remove_addresses=args.remove_address or [],
        )
        record = queries.contact(session, contact)
    show([record], {}, as_json=args.json)
    return EXIT_OK


def cmd_contact_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Remove a contact; the activities it took part in are kept or removed, as asked."""
    from mailledger.cli.staff import print_removal
    from mailledger.store import directory
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.removal import History, remove_contact

    choice = history_choice(args)
    if choice is None:
        err(
            f"say what happens to the history of contact {args.contact}: --keep-history keeps "
            "the activities it took part in, --remove-history deletes those no other outside "
            "party took part in (and their raw mail)"
        )
        return EXIT_USAGE
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        contact = directory.find_contact(session, tenant, args.contact)
        who = f"contact {contact.id} ({', '.join(a.address for a in contact.addresses)})"
        report = remove_contact(session, open_blob_backend(settings), contact, History(choice))
    return print_removal(args, who, report)


def register(commands: Any) -> None:
    """Add the ``contact`` command group to the CLI."""
    contact = group(commands, "contact", "people outside the tenant")
    sub = command(contact, "add", cmd_contact_add, "add a contact")
    sub.add_argument("tenant")
    sub.add_argument("address")
    sub.add_argument("--name", default="", metavar="N")
    sub.add_argument("--company", metavar="C")
    sub = command(contact, "import", cmd_contact_import, "import contacts from CSV")
    sub.add_argument("tenant")
    sub.add_argument("file", metavar="FILE.csv", help="columns email, name, company")
    sub.add_argument(
        "--dry-run", action="store_true", help="check every row and count; write nothing"
    )
    sub = json_flag(command(contact, "list", cmd_contact_list, "list a tenant's contacts"))
    sub.add_argument("tenant")
    ref_help = "the contact's id or one of its addresses"
    sub = json_flag(command(contact, "show", cmd_contact_show, "one contact in full"))
    sub.add_argument("tenant")
    sub.add_argument("contact", help=ref_help)
    sub = json_flag(command(contact, "set", cmd_contact_set, "fix name, company or addresses"))
    sub.add_argument("tenant")
    sub.add_argument("contact", help=ref_help)
    sub.add_argument("--name", metavar="N")
    sub.add_argument("--company", metavar="C", help='the company ("" takes it out of one)')
    sub.add_argument("--add-address", action="append", metavar="A")
    sub.add_argument("--remove-address", action="append", metavar="A")
    sub = json_flag(
        command(contact, "remove", cmd_contact_remove, "remove a contact, keeping or not history")
    )
    sub.add_argument("tenant")
    sub.add_argument("contact", help=ref_help)
    history_flags(
        sub,
        keep="keep the activities it took part in",
        remove="also delete those no other outside party took part in, and their raw mail",
    )
