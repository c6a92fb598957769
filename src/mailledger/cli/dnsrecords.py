"""``mailledger dns records | check``: the records to publish, and their live check.

``dns check`` exits 0 only when every record is right, so monitoring can run it: 1 when a
record is missing or wrong (someone must change DNS), 2 when DNS itself failed (a time-out, a
SERVFAIL: nothing is known to be wrong, try again). It is also how a DKIM key becomes
verified, and how a rotation switches signing to the new key. Its verdicts are kept as each
domain's last check (``store.dnschecks``), which the admin DNS page and the API show.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    command,
    err,
    group,
    json_flag,
    out,
    session_scope,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailledger.config import Settings
    from mailledger.domains.check import RecordCheck
    from mailledger.domains.records import Publish
    from mailledger.store.models import Tenant

# A DNS failure is neither "all right" nor "records wrong" (monitoring tells the two apart).
EXIT_LOOKUP_FAILED = 2


def _nameservers_usable(settings: Settings) -> bool:
    """False (after saying why, as check-config would) when [dns] nameservers is unusable."""
    from mailledger.service.preflight import check_nameservers

    problems = check_nameservers(settings)
    for problem in problems:
        err(str(problem))
    return not problems


# --- dns records ------------------------------------------------------------------------------


def _print_records(records: list[Publish], fmt: str, title: str) -> None:
    if fmt == "json":
        out(json.dumps([r.as_dict() for r in records], indent=2, ensure_ascii=False))
        return
    if fmt == "zone":
        out(f"; {title}")
        for record in records:
            out(f"; {record.kind}: {record.note}" if record.note else f"; {record.kind}")
            out(record.zone())
        return
    out(title)
    for record in records:
        out()
        out(
            f"{record.kind.upper()}  {record.name}  {record.rdtype}"
            + (f"  ({record.note})" if record.note else "")
        )
        out(f"  {record.zone()}")


def cmd_dns_records(args: argparse.Namespace, settings: Settings) -> int:
    """Print the records to publish: ours (--service) or a tenant's."""
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.domains.records import service_records, tenant_records
    from mailledger.store.directory import find_tenant

    if not args.service and not args.tenant:
        raise CommandError("name a tenant, or give --service for our own records")
    if not _nameservers_usable(settings):
        return EXIT_USAGE
    with session_scope(settings) as session:
        records: list[Publish] = []
        title: list[str] = []
        if args.service:
            if not settings.service.relay_addresses:
                title.append("[service] relay_addresses is empty: no SPF include to publish")
            records.extend(service_records(session, settings))
            title.insert(0, f"records mailledger publishes ({settings.service.hostname})")
        if args.tenant:
            tenant = find_tenant(session, args.tenant)
            resolver = Resolver(settings.dns)
            records.extend(tenant_records(session, tenant, settings, resolver))
            title.append(f"records tenant {tenant.name} publishes")
        _print_records(records, args.format, "; ".join(title))
    return EXIT_OK


# --- dns check --------------------------------------------------------------------------------


def _target(session: Session, value: str) -> tuple[Tenant, list[str] | None, bool]:
    """A tenant and what of it to check: everything, one customer domain, or the capture MX."""
    from sqlalchemy import select

    from mailledger.store.directory import find_tenant
    from mailledger.store.models import CustomerDomain

    key = value.strip().lower().rstrip(".")
    row = session.scalars(select(CustomerDomain).where(CustomerDomain.domain == key)).first()
    if row is not None:
        return row.tenant, [row.domain], False
    tenant = find_tenant(session, value)
    if tenant.capture_domain == key and tenant.name.lower() != key:
        return tenant, [], True
    return tenant, None, True


def print_checks(results: list[RecordCheck], title: str) -> None:
    """Results as a table a DNS admin reads: status, record, reason, then the line to publish."""
    problems = sum(1 for r in results if not r.ok)
    out(f"{title}: " + (f"{problems} problem(s)" if problems else "all records ok"))
    width = max((len(r.name) for r in results), default=0)
    for result in results:
        out(f"{result.status:<8} {result.kind:<5} {result.name:<{width}}  {result.reason}")
        if result.fix:
            out(f"{'':<15}publish: {result.fix}")


def cmd_dns_check(args: argparse.Namespace, settings: Settings) -> int:
    """Look every record up now; exit 0 when all are right, 1 when one is wrong, 2 when DNS
    failed."""
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.domains.check import all_ok, check_mx, check_tenant, lookup_failure_summary
    from mailledger.store.dnschecks import CheckedBy, record_check

    if not _nameservers_usable(settings):
        return EXIT_USAGE
    resolver = Resolver(settings.dns)
    with session_scope(settings) as session:
        tenant, domains, capture = _target(session, args.target)
        if domains == [] and capture:
            results = [check_mx(resolver, tenant.capture_domain, settings)]
        else:
            results = check_tenant(
                session, tenant, settings, resolver, domains=domains, capture=capture
            )
        # The admin DNS page and GET /v1/dns/records show this as the last check.
        record_check(session, tenant.id, [r.as_dict() for r in results], by=CheckedBy.CLI)
        if args.json:
            out(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
        else:
            print_checks(results, f"DNS check of {args.target} (tenant {tenant.name})")
    failed = lookup_failure_summary(results, settings)
    if failed:
        err(failed)
        return EXIT_LOOKUP_FAILED
    return EXIT_OK if all_ok(results) else EXIT_REFUSED


def register(commands: Any) -> None:
    """Add the ``dns`` command group to the CLI."""
    dns_group = group(commands, "dns", "records customers publish, and their live check")
    sub = command(dns_group, "records", cmd_dns_records, "print the records to publish")
    sub.add_argument("tenant", nargs="?", metavar="TENANT")
    sub.add_argument("--service", action="store_true", help="our own records (SPF include, MX)")
    sub.add_argument("--format", choices=("text", "zone", "json"), default="text")
    sub = json_flag(
        command(
            dns_group,
            "check",
            cmd_dns_check,
            "look the records up now; exit 0 all ok, 1 a record wrong, 2 DNS failed",
        )
    )
    sub.add_argument("target", metavar="TENANT|DOMAIN")
