"""``mailledger contact add | import | list``: the people outside a tenant it corresponds with."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    command,
    emit,
    err,
    group,
    json_flag,
    out,
    session_scope,
    sessions_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings


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


def cmd_contact_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import contacts from CSV; good rows go in, bad rows are listed by line."""
    from mailledger.store import directory

    path = Path(args.file)
    try:
        handle: TextIO = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}") from exc
    with handle, sessions_scope(settings) as sessions:
        report = directory.import_contacts(sessions, args.tenant, handle)
    for line, message in report.errors:
        err(f"{path}:{line}: {message}")
    out(f"imported {report.imported} contact(s), {len(report.errors)} row(s) refused")
    return EXIT_REFUSED if report.errors else EXIT_OK


def cmd_contact_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's contacts."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        rows = queries.contacts(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "company", "addresses"], as_json=args.json, empty="no contacts")
    return EXIT_OK


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
    sub = json_flag(command(contact, "list", cmd_contact_list, "list a tenant's contacts"))
    sub.add_argument("tenant")
