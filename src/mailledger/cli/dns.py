"""``mailledger dns …`` and ``mailledger dkim …``: the records to publish, their live check, keys.

``dns check`` exits 0 only when every record is right, so monitoring can run it; it is also
how a DKIM key becomes verified, and how a rotation switches signing to the new key.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    command,
    emit,
    group,
    json_flag,
    out,
    session_scope,
)
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.check import RecordCheck, all_ok, check_mx, check_tenant
from mailledger.domains.keys import (
    ALGORITHMS,
    DkimKeyError,
    create_key,
    domain_keys,
    record_check,
    record_name,
    retire_key,
    settle_active,
    verify_key_published,
)
from mailledger.domains.records import Publish, service_records, tenant_records
from mailledger.domains.zonetext import zone_line
from mailledger.store.directory import find_tenant
from mailledger.store.models import CustomerDomain, DkimKey, Tenant

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
    if not args.service and not args.tenant:
        raise CommandError("name a tenant, or give --service for our own records")
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
    """Look every record up now; exit 0 only when all are right."""
    resolver = Resolver(settings.dns)
    with session_scope(settings) as session:
        tenant, domains, capture = _target(session, args.target)
        if domains == [] and capture:
            results = [check_mx(resolver, tenant.capture_domain, settings)]
        else:
            results = check_tenant(
                session, tenant, settings, resolver, domains=domains, capture=capture
            )
        if args.json:
            out(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
        else:
            print_checks(results, f"DNS check of {args.target} (tenant {tenant.name})")
    return EXIT_OK if all_ok(results) else EXIT_REFUSED


# --- dkim -------------------------------------------------------------------------------------


def _key_dict(key: DkimKey) -> dict[str, Any]:
    def when(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "name": record_name(key.selector, key.domain),
        "active": key.active,
        "verified_at": when(key.verified_at),
        "retired_at": when(key.retired_at),
        "created_at": when(key.created_at),
        "record": key.public_record,
    }


def _new_key(
    session: Session, settings: Settings, args: argparse.Namespace
) -> tuple[Tenant, DkimKey]:
    tenant = find_tenant(session, args.tenant)
    try:
        key = create_key(
            session,
            tenant,
            args.domain,
            settings.relay.dkim_key_dir,
            selector=args.selector,
            algorithm=args.algorithm,
        )
    except DkimKeyError as exc:
        raise CommandError(str(exc)) from exc
    return tenant, key


def _show_new_key(key: DkimKey) -> None:
    out(f"created {key.algorithm} key {record_name(key.selector, key.domain)}")
    out("publish this record (one TXT record; long values are several strings of it):")
    out(f"  {zone_line(record_name(key.selector, key.domain), 'TXT', key.public_record)}")


def cmd_dkim_keygen(args: argparse.Namespace, settings: Settings) -> int:
    """Create a key for one of the tenant's domains and print the record to publish."""
    with session_scope(settings) as session:
        tenant, key = _new_key(session, settings, args)
        _show_new_key(key)
        out(
            f"then run `mailledger dns check {tenant.name}`: signing starts once it sees the record"
        )
    return EXIT_OK


def cmd_dkim_rotate(args: argparse.Namespace, settings: Settings) -> int:
    """Create the next key; signing switches to it once the check sees it published."""
    with session_scope(settings) as session:
        tenant = find_tenant(session, args.tenant)
        current = [k for k in domain_keys(session, tenant, args.domain) if k.active]
        if not current:
            raise CommandError(f"{args.domain} has no active key to rotate; use `dkim keygen`")
        tenant, key = _new_key(session, settings, args)
        _show_new_key(key)
        check = verify_key_published(Resolver(settings.dns), key)
        record_check(key, check)
        active = settle_active(session, tenant, key.domain)
        if active is key:
            out(f"{check.name} is already published: signing now uses it")
        else:
            old = record_name(current[0].selector, current[0].domain)
            out(
                f"signing keeps using {old} until `mailledger dns check {tenant.name}` sees the new"
            )
            out(f"record ({check.reason}); keep {old} published until you retire it with")
            out(f"`mailledger dkim retire {tenant.name} {key.domain} {current[0].selector}`")
    return EXIT_OK


def cmd_dkim_retire(args: argparse.Namespace, settings: Settings) -> int:
    """Retire a key that no longer signs; its record can then be removed."""
    with session_scope(settings) as session:
        tenant = find_tenant(session, args.tenant)
        try:
            key = retire_key(session, tenant, args.domain, args.selector)
        except DkimKeyError as exc:
            raise CommandError(str(exc)) from exc
        out(f"retired {record_name(key.selector, key.domain)}; its TXT record may now be removed")
    return EXIT_OK


def cmd_dkim_list(args: argparse.Namespace, settings: Settings) -> int:
    """The tenant's keys: which signs, which is verified, which is retired."""
    with session_scope(settings) as session:
        tenant = find_tenant(session, args.tenant)
        rows = [_key_dict(k) for k in domain_keys(session, tenant, include_retired=True)]
    columns = ["domain", "selector", "algorithm", "active", "verified_at", "retired_at"]
    emit(rows, columns, as_json=args.json, empty=f"tenant {tenant.name} has no DKIM keys")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``dns`` and ``dkim`` command groups to the CLI."""
    dns_group = group(commands, "dns", "records customers publish, and their live check")
    sub = command(dns_group, "records", cmd_dns_records, "print the records to publish")
    sub.add_argument("tenant", nargs="?", metavar="TENANT")
    sub.add_argument("--service", action="store_true", help="our own records (SPF include, MX)")
    sub.add_argument("--format", choices=("text", "zone", "json"), default="text")
    sub = json_flag(
        command(dns_group, "check", cmd_dns_check, "look the records up now; exit 0 when all ok")
    )
    sub.add_argument("target", metavar="TENANT|DOMAIN")

    dkim_group = group(commands, "dkim", "DKIM keys of customer domains")
    for name, handler, text in (
        ("keygen", cmd_dkim_keygen, "create a key and print its record"),
        ("rotate", cmd_dkim_rotate, "create the next key; switch once it is published"),
    ):
        sub = command(dkim_group, name, handler, text)
        sub.add_argument("tenant", metavar="TENANT")
        sub.add_argument("domain", metavar="DOMAIN")
        sub.add_argument("--selector", metavar="S")
        sub.add_argument("--algorithm", choices=ALGORITHMS, default="rsa")
    sub = command(dkim_group, "retire", cmd_dkim_retire, "retire a key that no longer signs")
    sub.add_argument("tenant", metavar="TENANT")
    sub.add_argument("domain", metavar="DOMAIN")
    sub.add_argument("selector", metavar="SELECTOR")
    sub = json_flag(command(dkim_group, "list", cmd_dkim_list, "the tenant's DKIM keys"))
    sub.add_argument("tenant", metavar="TENANT")
