"""``mailledger company add | list``: contacts' companies, and the domains that name them."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, emit, group, json_flag, out, session_scope

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_company_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a company (or add domains to one)."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        company = directory.add_company(session, tenant, args.name, args.domain or [])
        out(f"company {company.id}: {company.name}")
    return EXIT_OK


def cmd_company_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's companies."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        rows = queries.companies(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "domains", "contacts"], as_json=args.json, empty="no companies")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``company`` command group to the CLI."""
    company = group(commands, "company", "contacts' companies and their domains")
    sub = command(company, "add", cmd_company_add, "add a company")
    sub.add_argument("tenant")
    sub.add_argument("name")
    sub.add_argument("--domain", action="append", metavar="D")
    sub = json_flag(command(company, "list", cmd_company_list, "list a tenant's companies"))
    sub.add_argument("tenant")
