"""``mailledger tenant add | list | gateway``: the customer companies mailledger serves."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, emit, group, json_flag, out, session_scope

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_tenant_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a tenant; operator-added customer domains count as verified."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.add_tenant(
            session, args.name, args.capture_domain, args.customer_domain or []
        )
        out(f"tenant {tenant.name}: capture domain {tenant.capture_domain}")
    return EXIT_OK


def cmd_tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    """List tenants."""
    from mailledger.store import queries

    with session_scope(settings) as session:
        rows = queries.tenants(session)
    columns = ["id", "name", "capture_domain", "customer_domains", "staff"]
    emit(rows, columns, as_json=args.json, empty="no tenants")
    return EXIT_OK


def cmd_tenant_gateway(args: argparse.Namespace, settings: Settings) -> int:
    """Set or clear the filtering MTA whose Authentication-Results the tenant trusts."""
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        networks = [] if args.clear else (args.network or [])
        if not networks and not args.clear:
            raise directory.DirectoryError("give --network (one or more) or --clear")
        directory.set_gateway(session, tenant, networks, args.authserv_id or "")
        if networks:
            out(
                f"tenant {tenant.name}: trusting {tenant.gateway_authserv_id} from "
                + ", ".join(tenant.gateway_networks)
            )
        else:
            out(f"tenant {tenant.name}: no gateway")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``tenant`` command group to the CLI."""
    tenant = group(commands, "tenant", "customer companies")
    sub = command(tenant, "add", cmd_tenant_add, "add a tenant")
    sub.add_argument("name")
    sub.add_argument("--capture-domain", required=True, metavar="D")
    sub.add_argument("--customer-domain", action="append", metavar="D")
    json_flag(command(tenant, "list", cmd_tenant_list, "list tenants"))
    sub = command(tenant, "gateway", cmd_tenant_gateway, "trust a filtering MTA in front")
    sub.add_argument("tenant")
    sub.add_argument("--network", action="append", metavar="CIDR")
    sub.add_argument("--authserv-id", metavar="ID", help="the id its Authentication-Results carry")
    sub.add_argument("--clear", action="store_true", help="remove the gateway")
