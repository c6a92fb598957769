"""``mailledger tenant add | list | show | set | disable | enable | gateway``: the customer
companies mailledger serves, and their policies."""

from __future__ import annotations

import argparse
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
from mailledger.cli.switches import on_off

if TYPE_CHECKING:
    from mailledger.config import Settings

POLICIES = ("create_unknown_contacts", "record_internal", "strip_plus_tags")


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


def cmd_tenant_show(args: argparse.Namespace, settings: Settings) -> int:
    """One tenant in full: domains, policies, gateway, state and counts."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        record = queries.tenant(session, directory.find_tenant(session, args.tenant))
    show([record], {}, as_json=args.json)
    return EXIT_OK


def cmd_tenant_set(args: argparse.Namespace, settings: Settings) -> int:
    """Switch the tenant's policies on or off, or choose its system sender."""
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.domains.systemsender import set_system_sender, system_sender
    from mailledger.store import directory, queries

    values = {name: getattr(args, name) for name in POLICIES}
    if all(value is None for value in values.values()) and args.system_sender is None:
        err(
            "say what to set: "
            + ", ".join(f"--{n.replace('_', '-')} on|off" for n in POLICIES)
            + ", --system-sender ADDRESS|default"
        )
        return EXIT_USAGE
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        changed: list[str] = []
        if any(value is not None for value in values.values()):
            policies = directory.TenantPolicies(**values)
            changed = directory.set_tenant_policies(session, tenant, policies)
        if args.system_sender is not None:
            # Refused (SystemSenderError, exit 1) unless the domain's DKIM key is verified.
            set_system_sender(session, tenant, args.system_sender, settings, Resolver(settings.dns))
            changed.append("system_sender")
        record = queries.tenant(session, tenant)
        sender = system_sender(session, tenant.id, settings.service)
        record["system_sender_in_use"] = sender.address
    if args.json:
        show([record], {}, as_json=True)
        return EXIT_OK
    for name in POLICIES:
        state = "on" if record[name] else "off"
        note = " (changed)" if name in changed else ""
        out(f"{name.replace('_', '-')}: {state}{note}")
    whose = "the tenant's choice, DKIM-signed" if sender.chosen else "[service] system_address"
    note = " (changed)" if "system_sender" in changed else ""
    out(f"system-sender: {sender.address} ({whose}){note}")
    return EXIT_OK


def cmd_tenant_disable(args: argparse.Namespace, settings: Settings) -> int:
    """Refuse every capture address of the tenant at RCPT; its records stay."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        changed = directory.disable_tenant(session, tenant)
        record = queries.tenant(session, tenant)
    if args.json:
        show([record], {}, as_json=True)
    elif changed:
        out(f"tenant {record['name']} disabled: mail to {record['capture_domain']} is refused")
    else:
        out(f"tenant {record['name']} was already disabled (since {record['disabled_at']})")
    return EXIT_OK


def cmd_tenant_enable(args: argparse.Namespace, settings: Settings) -> int:
    """Accept the tenant's capture addresses again."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        changed = directory.enable_tenant(session, tenant)
        record = queries.tenant(session, tenant)
    if args.json:
        show([record], {}, as_json=True)
    else:
        what = "enabled" if changed else "was not disabled"
        out(f"tenant {record['name']} {what}: mail to {record['capture_domain']} is accepted")
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
    sub = json_flag(command(tenant, "show", cmd_tenant_show, "one tenant in full"))
    sub.add_argument("tenant")
    sub = json_flag(command(tenant, "set", cmd_tenant_set, "switch the tenant's policies"))
    sub.add_argument("tenant")
    sub.add_argument(
        "--create-unknown-contacts",
        type=on_off,
        metavar="on|off",
        help="make a contact of an unknown outside party",
    )
    sub.add_argument(
        "--record-internal",
        type=on_off,
        metavar="on|off",
        help="record mail between staff members only",
    )
    sub.add_argument(
        "--strip-plus-tags",
        type=on_off,
        metavar="on|off",
        help="read name+tag@ as name@ when matching mail and adding addresses",
    )
    sub.add_argument(
        "--system-sender",
        metavar="ADDRESS|default",
        help="send sign-in links and alerts from this staff address (its domain's DKIM key "
        "must be published and verified); default: [service] system_address",
    )
    sub = json_flag(
        command(tenant, "disable", cmd_tenant_disable, "refuse all its capture addresses")
    )
    sub.add_argument("tenant")
    sub = json_flag(command(tenant, "enable", cmd_tenant_enable, "accept its mail again"))
    sub.add_argument("tenant")
    sub = command(tenant, "gateway", cmd_tenant_gateway, "trust a filtering MTA in front")
    sub.add_argument("tenant")
    sub.add_argument("--network", action="append", metavar="CIDR")
    sub.add_argument("--authserv-id", metavar="ID", help="the id its Authentication-Results carry")
    sub.add_argument("--clear", action="store_true", help="remove the gateway")
