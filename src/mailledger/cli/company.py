"""``mailledger company add | list | show | set | remove``: contacts' companies, and the
domains that name them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_USAGE,
    command,
    emit,
    err,
    group,
    json_flag,
    out,
    session_scope,
    show,
)

if TYPE_CHECKING:
    from mailledger.config import Settings

CONTACT_COLUMNS: dict[str, Sequence[str]] = {"contacts": ["id", "name", "addresses"]}


def cmd_company_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a company (or add domains to one); free-mail domains are refused."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        company = directory.create_company(session, tenant, args.name, args.domain or [])
        out(f"company {company.id}: {company.name}")
    return EXIT_OK


def cmd_company_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's companies."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        rows = queries.companies(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "domains", "contacts"], as_json=args.json, empty="no companies")
    return EXIT_OK


def cmd_company_show(args: argparse.Namespace, settings: Settings) -> int:
    """One company in full, with its contacts."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        record = queries.company(session, directory.find_company(session, tenant, args.company))
    show([record], CONTACT_COLUMNS, as_json=args.json)
    return EXIT_OK


def cmd_company_set(args: argparse.Namespace, settings: Settings) -> int:
    """Rename a company, or give it or take away domains."""
    from mailledger.store import directory, queries

    if args.name is None and not args.add_domain and not args.remove_domain:
        err("say what to set: --name, --add-domain or --remove-domain")
        return EXIT_USAGE
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        company = directory.find_company(session, tenant, args.company)
        directory.set_company(
            session,
            tenant,
            company,
            name=args.name,
            add_domains=args.add_domain or [],
            remove_domains=args.remove_domain or [],
        )
        record = queries.company(session, company)
    show([record], CONTACT_COLUMNS, as_json=args.json)
    return EXIT_OK


def cmd_company_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a company and its domains; its contacts stay, without a company."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        company = directory.find_company(session, tenant, args.company)
        name = company.name
        contacts = directory.remove_company(session, company)
    if args.json:
        show([{"name": name, "removed": True, "contacts_kept": contacts}], {}, as_json=True)
    else:
        out(f"company {name} removed; {contacts} contact(s) kept without a company")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``company`` command group to the CLI."""
    company = group(commands, "company", "contacts' companies and their domains")
    sub = command(company, "add", cmd_company_add, "add a company")
    sub.add_argument("tenant")
    sub.add_argument("name")
    sub.add_argument("--domain", action="append", metavar="D", help="not a free-mail domain")
    sub = json_flag(command(company, "list", cmd_company_list, "list a tenant's companies"))
    sub.add_argument("tenant")
    ref_help = "the company's id or name"
    sub = json_flag(command(company, "show", cmd_company_show, "one company in full"))
    sub.add_argument("tenant")
    sub.add_argument("company", help=ref_help)
    sub = json_flag(command(company, "set", cmd_company_set, "rename, or change domains"))
    sub.add_argument("tenant")
    sub.add_argument("company", help=ref_help)
    sub.add_argument("--name", metavar="N")
    sub.add_argument("--add-domain", action="append", metavar="D")
    sub.add_argument("--remove-domain", action="append", metavar="D")
    sub = json_flag(
        command(company, "remove", cmd_company_remove, "delete a company; contacts stay")
    )
    sub.add_argument("tenant")
    sub.add_argument("company", help=ref_help)
