"""``mailledger staff …``: a tenant's users, their capture address and their relay set-up.

``add``, ``list`` and ``forwarding`` manage who a staff member is; ``password``,
``verify-forwarding`` and ``show`` cover sending through the relay and proving forwarding.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import (
    EXIT_OK,
    command,
    emit,
    emit_record,
    group,
    json_flag,
    out,
    session_scope,
    sessions_scope,
)

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_staff_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a staff member and print the capture address they forward to."""
    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.add_staff(
            session, tenant, args.username, args.address, name=args.name, primary=args.primary
        )
        out(capture_address(staff.username, tenant.capture_domain))
    return EXIT_OK


def cmd_staff_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's staff."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        rows = queries.staff_members(session, directory.find_tenant(session, args.tenant))
    columns = ["id", "username", "name", "capture_address", "primary_address", "addresses"]
    emit(rows, columns, as_json=args.json, empty="no staff")
    return EXIT_OK


def cmd_staff_forwarding(args: argparse.Namespace, settings: Settings) -> int:
    """Show the forwarding-confirmation codes Gmail mailed to a staff member's capture address."""
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        rows = queries.forwarding_confirmations(session, staff)
    columns = ["received_at", "provider", "code", "requested_by", "handback", "link"]
    emit(rows, columns, as_json=args.json, empty="no forwarding confirmations yet")
    return EXIT_OK


def cmd_staff_password(args: argparse.Namespace, settings: Settings) -> int:
    """Make a new relay password; it is shown once and only its hash is stored."""
    from mailledger.mail.addresses import capture_address
    from mailledger.relay.credentials import generate_password, hash_password
    from mailledger.store import directory

    password = generate_password()
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        staff.password_hash = hash_password(password)
        login = capture_address(staff.username, tenant.capture_domain)
    port = "587 (STARTTLS)" if settings.submission.listen else "465 (SSL/TLS)"
    out(f"SMTP server:  {settings.service.hostname}")
    out(f"port:         {port}")
    out(f"username:     {login}")
    out(f"password:     {password}")
    out("The password is shown only now; run this command again to replace it.")
    return EXIT_OK


def cmd_staff_verify_forwarding(args: argparse.Namespace, settings: Settings) -> int:
    """Send the round-trip forwarding check through the relay."""
    import asyncio

    from mailledger.dnsauth.resolver import Resolver
    from mailledger.forwarding import handback
    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory
    from mailledger.store.blobs import BlobStore

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        staff_id, primary = staff.id, staff.primary_address
        target = capture_address(staff.username, tenant.capture_domain)
    with sessions_scope(settings) as sessions:
        check = asyncio.run(
            handback.send_challenge(
                sessions,
                BlobStore(settings.storage.blob_dir),
                settings,
                Resolver(settings.dns),
                staff_id=staff_id,
            )
        )
    out(f"challenge queued to {primary}; it should come back to {target}")
    out(f"valid until {check.expires_at.isoformat()}")
    out(f"see the result with: mailledger staff show {args.tenant} {args.username}")
    return EXIT_OK


def cmd_staff_show(args: argparse.Namespace, settings: Settings) -> int:
    """One staff member: addresses, relay login, and how forwarding was proven."""
    from sqlalchemy import func, select

    from mailledger.forwarding import handback
    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory
    from mailledger.store.models import ForwardingConfirmation, StaffAddress

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        addresses = session.scalars(
            select(StaffAddress).where(StaffAddress.staff_id == staff.id).order_by(StaffAddress.id)
        ).all()
        pending = session.scalar(
            select(func.count())
            .select_from(ForwardingConfirmation)
            .where(
                ForwardingConfirmation.staff_id == staff.id,
                ForwardingConfirmation.handback_state == handback.PENDING,
            )
        )
        forwarding = handback.forwarding_status(session, staff)
        record: dict[str, Any] = {
            "tenant": tenant.name,
            "username": staff.username,
            "name": staff.name,
            "capture_address": capture_address(staff.username, tenant.capture_domain),
            "primary_address": staff.primary_address,
            "addresses": [a.address + ("" if a.verified else " (unverified)") for a in addresses],
            "relay_login": capture_address(staff.username, tenant.capture_domain),
            "relay_password": "set" if staff.password_hash else "not set",
            "confirmations_pending_handback": int(pending or 0),
            "forwarding": forwarding["state"],
            "forwarding_proven_at": forwarding.get("proven_at"),
            "forwarding_check_expires_at": forwarding.get("expires_at"),
        }
        observed = forwarding.get("observed") or {}
    if args.json:
        out(json.dumps([record | {"forwarding_observed": observed}], indent=2))
        return EXIT_OK
    emit_record(record, {})
    if observed:
        out()
        out("forwarded copy looked like:")
        for key, value in observed.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            out(f"  {key}: {shown or '-'}")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``staff`` command group to the CLI."""
    staff = group(commands, "staff", "a tenant's users")
    sub = command(staff, "add", cmd_staff_add, "add a staff member; prints the capture address")
    sub.add_argument("tenant")
    sub.add_argument("username")
    sub.add_argument("--address", action="append", required=True, metavar="A")
    sub.add_argument("--name", default="", metavar="N")
    sub.add_argument("--primary", metavar="A", help="where forwarding confirmations go")
    sub = json_flag(command(staff, "list", cmd_staff_list, "list a tenant's staff"))
    sub.add_argument("tenant")
    sub = json_flag(
        command(staff, "forwarding", cmd_staff_forwarding, "forwarding confirmation codes")
    )
    sub.add_argument("tenant")
    sub.add_argument("username")
    sub = command(staff, "password", cmd_staff_password, "make a relay (SMTP AUTH) password")
    sub.add_argument("tenant")
    sub.add_argument("username")
    sub = command(
        staff,
        "verify-forwarding",
        cmd_staff_verify_forwarding,
        "prove forwarding with a round-trip challenge",
    )
    sub.add_argument("tenant")
    sub.add_argument("username")
    sub = json_flag(command(staff, "show", cmd_staff_show, "one staff member in full"))
    sub.add_argument("tenant")
    sub.add_argument("username")
