"""``mailledger dkim keygen | rotate | retire | list | import``: the DKIM keys of customer domains.

A new key signs only once ``mailledger dns check`` sees its record published: mail signed with
a key nobody can look up fails DKIM everywhere. Private keys are kept in the database, sealed
with ``[secrets] key_file``; no command prints one (only the public records to publish).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    CommandError,
    command,
    emit,
    group,
    json_flag,
    out,
    secret_box,
    session_scope,
    sessions_scope,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from mailledger.config import Settings
    from mailledger.store.models import DkimKey, Tenant

# ``mailledger.domains.keys.ALGORITHMS`` for ``--algorithm``, copied so that building the
# parser needs no cryptography or SQLAlchemy (tests/unit/test_cli_startup.py keeps the two equal).
ALGORITHMS = ("rsa", "ed25519")


def _key_dict(key: DkimKey) -> dict[str, Any]:
    from mailledger.domains.keys import record_name

    def when(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "domain": key.domain,
        "selector": key.selector,
        "algorithm": key.algorithm,
        "name": record_name(key.selector, key.domain),
        "active": key.active,
        # Where the private key is: "database" (sealed), or "file" until `dkim import`.
        "private_key": "database" if key.private_key is not None else "file",
        "activated_at": when(key.activated_at),
        "verified_at": when(key.verified_at),
        "retired_at": when(key.retired_at),
        "created_at": when(key.created_at),
        "record": key.public_record,
    }


def _new_key(
    session: Session, settings: Settings, args: argparse.Namespace
) -> tuple[Tenant, DkimKey]:
    from mailledger.domains.keys import DkimKeyError, create_key
    from mailledger.store.directory import find_tenant

    tenant = find_tenant(session, args.tenant)
    try:
        key = create_key(
            session,
            tenant,
            args.domain,
            secret_box(settings),
            selector=args.selector,
            algorithm=args.algorithm,
        )
    except DkimKeyError as exc:
        raise CommandError(str(exc)) from exc
    return tenant, key


def _show_new_key(key: DkimKey) -> None:
    from mailledger.domains.keys import record_name
    from mailledger.domains.zonetext import zone_line

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
    from mailledger.dnsauth.resolver import Resolver
    from mailledger.domains.keys import (
        domain_keys,
        record_check,
        record_name,
        settle_active,
        verify_key_published,
    )
    from mailledger.store.directory import find_tenant

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
    from mailledger.domains.keys import DkimKeyError, record_name, retire_key
    from mailledger.store.directory import find_tenant

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
    from mailledger.domains.keys import domain_keys
    from mailledger.store.directory import find_tenant

    with session_scope(settings) as session:
        tenant = find_tenant(session, args.tenant)
        rows = [_key_dict(k) for k in domain_keys(session, tenant, include_retired=True)]
    columns = [
        "domain",
        "selector",
        "algorithm",
        "active",
        "private_key",
        "created_at",
        "activated_at",
        "verified_at",
        "retired_at",
    ]
    emit(rows, columns, as_json=args.json, empty=f"tenant {tenant.name} has no DKIM keys")
    return EXIT_OK


def import_key_files(settings: Settings) -> bool:
    """Move every key that is still a file into the database; True when none is left behind.

    ``dkim import`` and ``db upgrade`` both call it. Each line names the key and its file,
    never its contents.
    """
    from mailledger.domains.keyimport import import_key_files as move_files

    with sessions_scope(settings) as sessions:
        results = move_files(sessions, secret_box(settings), settings.relay.dkim_key_dir)
    for result in results:
        out(f"{result.name}: {result.reason}")
    return all(result.imported for result in results)


def cmd_dkim_import(_args: argparse.Namespace, settings: Settings) -> int:
    """Seal key files made before keys lived in the database into it; the files stay."""
    if not import_key_files(settings):
        return EXIT_REFUSED
    out("every DKIM private key is in the database")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``dkim`` command group to the CLI."""
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
    command(dkim_group, "import", cmd_dkim_import, "move key files into the database, sealed")
