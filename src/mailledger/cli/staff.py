"""``mailledger staff …``: a tenant's users, their capture address and their relay set-up.

``add``, ``list``, ``set``, ``disable``, ``enable``, ``remove`` and ``forwarding`` manage who a
staff member is; ``password``, ``verify-forwarding`` and ``show`` cover sending through the
relay and proving forwarding.
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
    emit,
    emit_record,
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
    from mailledger.store.removal import RemovalReport


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
    """List a tenant's staff, with whether their forwarding works (and since when not)."""
    from mailledger.forwarding.handback import brief_words, forwarding_brief
    from mailledger.store import directory, queries
    from mailledger.store.models import Staff

    with session_scope(settings) as session:
        rows = queries.staff_members(session, directory.find_tenant(session, args.tenant))
        for row in rows:
            brief = forwarding_brief(session, session.get_one(Staff, row["id"]))
            row["forwarding"] = brief if args.json else brief_words(brief)
    columns = [
        "id", "username", "name", "capture_address", "primary_address", "addresses",
        "forwarding", "state",
    ]  # fmt: skip
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
    from mailledger.relay.credentials import PasswordRefusedError, issue_password
    from mailledger.store import directory

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        try:
            password = issue_password(session, staff)
        except PasswordRefusedError as exc:
            err(str(exc))
            return EXIT_REFUSED
        login = capture_address(staff.username, tenant.capture_domain)
    ports = submission_ports(settings)
    out(f"SMTP server:  {settings.service.hostname}")
    for port in ports or ["none: submission is off ([submission] listen and listen_tls are empty)"]:
        out(f"port:         {port}")
    out(f"username:     {login}")
    out(f"password:     {password}")
    out("The password is shown only now; run this command again to replace it.")
    if not ports:
        err("submission is off: the password is stored, but nothing accepts it until")
        err("[submission] listen or listen_tls is set and `mailledger serve` restarted")
    return EXIT_OK


def submission_ports(settings: Settings) -> list[str]:
    """The ports the relay listens on, as a mail client's settings name them."""
    from mailledger.config import split_listen

    ports = []
    for kinds, addresses in (
        ("STARTTLS", settings.submission.listen),
        ("SSL/TLS", settings.submission.listen_tls),
    ):
        for address in addresses:
            _, port = split_listen(address)
            ports.append(f"{port} ({kinds}; listening on {address})")
    return ports


def cmd_staff_verify_forwarding(args: argparse.Namespace, settings: Settings) -> int:
    """Send the round-trip forwarding check through the relay."""
    import asyncio

    from mailledger.dnsauth.resolver import Resolver
    from mailledger.forwarding import handback
    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory
    from mailledger.store.blobbackend import open_blob_backend

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        staff_id, primary = staff.id, staff.primary_address
        target = capture_address(staff.username, tenant.capture_domain)
    with sessions_scope(settings) as sessions:
        check = asyncio.run(
            handback.send_challenge(
                sessions,
                open_blob_backend(settings),
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
    from mailledger.store import directory, queries
    from mailledger.store.models import ForwardingConfirmation, StaffAddress

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username, include_removed=True)
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
            **queries.staff_state(staff),
            "primary_address": staff.primary_address,
            "addresses": [a.address + ("" if a.verified else " (unverified)") for a in addresses],
            "relay_login": capture_address(staff.username, tenant.capture_domain),
            "relay_password": "set" if staff.password_hash else "not set",
            "confirmations_pending_handback": int(pending or 0),
            "forwarding": forwarding["state"],
            "forwarding_proven_at": forwarding.get("proven_at"),
            "forwarding_check_expires_at": forwarding.get("expires_at"),
        }
        if forwarding["state"] == handback.BROKEN:
            # forwarding/health.py: a proven forward that stopped; the fix is mailed to them.
            record["forwarding_broken_since"] = forwarding["broken_since"]
            record["forwarding_broken_because"] = forwarding["broken_detail"]
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


def cmd_staff_set(args: argparse.Namespace, settings: Settings) -> int:
    """Change a staff member's name, primary address, own addresses or signature."""
    from mailledger.store import directory, queries

    if (
        args.name is None
        and args.primary is None
        and not args.add_address
        and not args.remove_address
        and args.admin is None
        and args.signature_file is None
        and args.signature_html_file is None
    ):
        err(
            "say what to set: --name, --primary, --add-address, --remove-address, --admin, "
            "--signature-file or --signature-html-file"
        )
        return EXIT_USAGE
    signature = _read_signature(args.signature_file)
    signature_html = _read_signature(args.signature_html_file)
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        directory.set_staff(
            session,
            staff,
            name=args.name,
            primary=args.primary,
            add_addresses=args.add_address or [],
            remove_addresses=args.remove_address or [],
        )
        if args.admin is not None:
            directory.set_admin(session, staff, args.admin)
        if signature is not None or signature_html is not None:
            directory.set_signature(session, staff, text=signature, html=signature_html)
        (record,) = [
            r for r in queries.staff_members(session, tenant) if r["username"] == staff.username
        ]
        record["admin"] = staff.admin
        record |= _signature_record(staff, full=args.json)
    if args.json:
        show([record], {}, as_json=True)
    else:
        emit_record(record, {})
    return EXIT_OK


def _read_signature(path: str | None) -> str | None:
    """A signature file's text (UTF-8; an empty file clears it), None when not given."""
    if path is None:
        return None
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(
            f"cannot read the signature file {path}: {exc} (it must be UTF-8 text)"
        ) from exc


def _signature_record(staff: Any, *, full: bool) -> dict[str, Any]:
    """The signature as `staff set` shows it: in full for --json, else how long it is."""
    if full:
        return {"signature_text": staff.signature_text, "signature_html": staff.signature_html}

    def lines(value: str) -> str:
        return f"{len(value.splitlines())} line(s)" if value else "none"

    return {"signature": f"text {lines(staff.signature_text)}, HTML {lines(staff.signature_html)}"}


def cmd_staff_disable(args: argparse.Namespace, settings: Settings) -> int:
    """Refuse the staff member's capture address at RCPT; everything else stays."""
    return _switch(args, settings, disable=True)


def cmd_staff_enable(args: argparse.Namespace, settings: Settings) -> int:
    """Accept the staff member's capture address again."""
    return _switch(args, settings, disable=False)


def _switch(args: argparse.Namespace, settings: Settings, *, disable: bool) -> int:
    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory, queries

    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        change = directory.disable_staff if disable else directory.enable_staff
        changed = change(session, staff)
        address = capture_address(staff.username, tenant.capture_domain)
        record = {"username": staff.username, "capture_address": address}
        record |= queries.staff_state(staff)
    if args.json:
        show([record], {}, as_json=True)
    elif disable:
        what = "disabled" if changed else "was already disabled"
        out(f"{staff.username} {what}: mail to {address} is refused (550 5.1.1)")
    else:
        what = "enabled" if changed else "was not disabled"
        out(f"{staff.username} {what}: mail to {address} is accepted")
    return EXIT_OK


def cmd_staff_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Remove a staff member who left; the history is kept or removed, as asked."""
    from mailledger.store import directory
    from mailledger.store.blobbackend import open_blob_backend
    from mailledger.store.removal import History, remove_staff

    choice = history_choice(args)
    if choice is None:
        err(
            f"say what happens to {args.username}'s history: --keep-history keeps the "
            "activities they brought in, --remove-history deletes those only they brought in "
            "(and their raw mail)"
        )
        return EXIT_USAGE
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        username = staff.username
        report = remove_staff(session, open_blob_backend(settings), staff, History(choice))
    return print_removal(args, f"staff member {username}", report)


def print_removal(args: argparse.Namespace, who: str, report: RemovalReport) -> int:
    """What a removal did, counted (``contact remove`` prints the same way)."""
    from dataclasses import asdict

    if args.json:
        out(json.dumps([asdict(report)], indent=2))
        return EXIT_OK
    out(f"{who} removed; {report.summary()}")
    if report.relay_password_revoked or report.forwarding_checks_revoked:
        out(
            f"revoked: relay password {'yes' if report.relay_password_revoked else 'not set'}, "
            f"{report.forwarding_checks_revoked} forwarding proof(s)"
        )
    out(f"{report.addresses_freed} address(es) freed")
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
    sub = json_flag(command(staff, "set", cmd_staff_set, "change name or addresses"))
    sub.add_argument("tenant")
    sub.add_argument("username")
    sub.add_argument("--name", metavar="N")
    sub.add_argument("--primary", metavar="A", help="where forwarding confirmations go")
    sub.add_argument("--add-address", action="append", metavar="A")
    sub.add_argument("--remove-address", action="append", metavar="A")
    sub.add_argument(
        "--admin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="make (or with --no-admin, unmake) a tenant admin of the web pages",
    )
    sub.add_argument(
        "--signature-file",
        metavar="FILE",
        help="plain-text signature (UTF-8) added below mail sent through the API; "
        "an empty file removes it",
    )
    sub.add_argument(
        "--signature-html-file",
        metavar="FILE",
        help="HTML signature for the HTML part (without it, the text one is used there)",
    )
    for name, handler, text in (
        ("disable", cmd_staff_disable, "refuse the capture address (550 5.1.1)"),
        ("enable", cmd_staff_enable, "accept the capture address again"),
    ):
        sub = json_flag(command(staff, name, handler, text))
        sub.add_argument("tenant")
        sub.add_argument("username")
    sub = json_flag(
        command(staff, "remove", cmd_staff_remove, "remove one who left, keeping or not history")
    )
    sub.add_argument("tenant")
    sub.add_argument("username")
    history_flags(
        sub,
        keep="keep the activities they brought in",
        remove="also delete the activities only they brought in, and their raw mail",
    )
