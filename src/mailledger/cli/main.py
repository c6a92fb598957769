"""The ``mailledger`` command: the operator's interface (DESIGN §10).

Each command is a thin function: parse arguments, open a session, call ``store`` and print.
Exit codes: 0 done, 1 the request was refused (unknown tenant, duplicate address, …),
2 the configuration or the command line is wrong.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from mailledger import config as config_module
from mailledger.cli import dns as dns_commands
from mailledger.cli import queue as queue_commands
from mailledger.cli import retention as retention_commands
from mailledger.cli.kit import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    Handler,
    command,
    emit,
    err,
    group,
    json_flag,
    limit_flag,
    out,
    session_scope,
    sessions_scope,
    show,
    toml_lines,
)
from mailledger.cli.relaystaff import register as register_relay_staff_commands
from mailledger.config import ConfigError, Settings, load_settings, split_listen
from mailledger.mail.addresses import AddressError, capture_address
from mailledger.store import directory, quarantine, queries
from mailledger.store.blobs import BlobStore
from mailledger.store.directory import DirectoryError
from mailledger.store.models import MessageState

# --- commands ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run every listener and worker until Ctrl-C or SIGTERM; SIGHUP reloads ``--config``."""
    from mailledger.service.server import run_server  # noqa: PLC0415 - only serve needs the server

    code: int = run_server(settings, args.config)
    return code


def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the effective settings with secrets masked."""
    data = config_module.masked(settings)
    if args.json:
        out(json.dumps(data, indent=2))
    else:
        out("\n".join(toml_lines(data)).rstrip())
    return EXIT_OK


def upgrade(url: str) -> None:
    """Apply the migrations; Alembic is imported only by the commands that need it."""
    from mailledger.store.migrate import upgrade as apply_migrations  # noqa: PLC0415

    apply_migrations(url)


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema up to date."""
    upgrade(settings.database.url)
    out("database schema is up to date")
    return EXIT_OK


def cmd_demo_init(_args: argparse.Namespace, settings: Settings) -> int:
    """Create the schema and the demo tenant, then say what to send where."""
    from mailledger.cli.demo import DEMO_STAFF, seed_demo  # noqa: PLC0415

    upgrade(settings.database.url)
    with session_scope(settings) as session:
        addresses = seed_demo(session)
    host, port = split_listen(settings.capture.listen[0]) if settings.capture.listen else ("", 0)
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising a wildcard, not binding one
        host = "127.0.0.1"
    config_hint = f" --config {args_config}" if (args_config := _args.config) else ""
    out(
        DEMO_TEXT.format(
            user_capture=addresses.user_capture,
            log_capture=addresses.log_capture,
            staff=DEMO_STAFF,
            staff_address=addresses.staff_address,
            contact=addresses.contact_address,
            host=host,
            port=port,
            config=config_hint,
        )
    )
    return EXIT_OK


def cmd_demo_send(args: argparse.Namespace, settings: Settings) -> int:
    """Send the demo email to the running capture listener, as a forwarding rule would."""
    import smtplib  # noqa: PLC0415

    from mailledger.cli.demo import DEMO_CONTACT, demo_email  # noqa: PLC0415

    if not settings.capture.listen:
        raise directory.DirectoryError("[capture] listen is empty: nothing to send to")
    host, port = split_listen(settings.capture.listen[0])
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising a wildcard, not binding one
        host = "127.0.0.1"
    message = demo_email(args.subject)
    try:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            refused = smtp.send_message(message, from_addr=DEMO_CONTACT, to_addrs=[args.to])
    except (OSError, smtplib.SMTPException) as exc:
        err(f"could not deliver to {host}:{port}: {exc} (is `mailledger serve` running?)")
        return EXIT_REFUSED
    if refused:
        err(f"refused: {refused}")
        return EXIT_REFUSED
    out(f"sent {message['Message-ID']} to {args.to} via {host}:{port}")
    return EXIT_OK


DEMO_TEXT = """\
Demo tenant "acme" is ready.

  forward to (user capture):  {user_capture}   ({staff}'s own address: {staff_address})
  BCC (log capture):          {log_capture}
  a known contact:            {contact}
  capture listener:           {host}:{port}

The demo configuration trusts mail from loopback as if an authenticated forwarder sent it
([verify] demo_trust_loopback, DEMO ONLY; production checks SPF, DKIM, ARC and DMARC).

While `mailledger serve` runs, send the demo email with

  mailledger{config} demo send

or by hand, with Python:

python3 - <<'EOF'
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

msg = EmailMessage()
msg["Message-ID"] = make_msgid(domain="client.example")
msg["Date"] = formatdate(localtime=True)
msg["From"] = "Carol Client <{contact}>"
msg["To"] = "Richard Smith <{staff_address}>"
msg["Subject"] = "Quote for the new office"
msg.set_content("Hello Richard, could you send us the quote? Carol")
with smtplib.SMTP("{host}", {port}) as smtp:
    smtp.send_message(msg, from_addr="{contact}", to_addrs=["{user_capture}"])
EOF

or with swaks:

swaks --server {host}:{port} --from {contact} --to {user_capture} \\
      --header "Subject: Quote for the new office"

Then see what happened to it:

  mailledger{config} messages list
  mailledger{config} activities list --json"""


def cmd_tenant_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a tenant; operator-added customer domains count as verified."""
    with session_scope(settings) as session:
        tenant = directory.add_tenant(
            session, args.name, args.capture_domain, args.customer_domain or []
        )
        out(f"tenant {tenant.name}: capture domain {tenant.capture_domain}")
    return EXIT_OK


def cmd_tenant_list(args: argparse.Namespace, settings: Settings) -> int:
    """List tenants."""
    with session_scope(settings) as session:
        rows = queries.tenants(session)
    columns = ["id", "name", "capture_domain", "customer_domains", "staff"]
    emit(rows, columns, as_json=args.json, empty="no tenants")
    return EXIT_OK


def cmd_staff_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a staff member and print the capture address they forward to."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.add_staff(
            session, tenant, args.username, args.address, name=args.name, primary=args.primary
        )
        out(capture_address(staff.username, tenant.capture_domain))
    return EXIT_OK


def cmd_staff_forwarding(args: argparse.Namespace, settings: Settings) -> int:
    """Show the forwarding-confirmation codes Gmail mailed to a staff member's capture address."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.username)
        rows = queries.forwarding_confirmations(session, staff)
    columns = ["received_at", "provider", "code", "requested_by", "handback", "link"]
    emit(rows, columns, as_json=args.json, empty="no forwarding confirmations yet")
    return EXIT_OK


def cmd_tenant_gateway(args: argparse.Namespace, settings: Settings) -> int:
    """Set or clear the filtering MTA whose Authentication-Results the tenant trusts."""
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


def cmd_staff_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's staff."""
    with session_scope(settings) as session:
        rows = queries.staff_members(session, directory.find_tenant(session, args.tenant))
    columns = ["id", "username", "name", "capture_address", "primary_address", "addresses"]
    emit(rows, columns, as_json=args.json, empty="no staff")
    return EXIT_OK


def cmd_contact_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a contact."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        contact = directory.add_contact(
            session, tenant, [args.address], name=args.name, company=args.company
        )
        out(f"contact {contact.id}: {', '.join(a.address for a in contact.addresses)}")
    return EXIT_OK


def cmd_contact_import(args: argparse.Namespace, settings: Settings) -> int:
    """Import contacts from CSV; good rows go in, bad rows are listed by line."""
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
    with session_scope(settings) as session:
        rows = queries.contacts(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "company", "addresses"], as_json=args.json, empty="no contacts")
    return EXIT_OK


def cmd_company_add(args: argparse.Namespace, settings: Settings) -> int:
    """Create a company (or add domains to one)."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        company = directory.add_company(session, tenant, args.name, args.domain or [])
        out(f"company {company.id}: {company.name}")
    return EXIT_OK


def cmd_company_list(args: argparse.Namespace, settings: Settings) -> int:
    """List a tenant's companies."""
    with session_scope(settings) as session:
        rows = queries.companies(session, directory.find_tenant(session, args.tenant))
    emit(rows, ["id", "name", "domains", "contacts"], as_json=args.json, empty="no companies")
    return EXIT_OK


def cmd_never_log_add(args: argparse.Namespace, settings: Settings) -> int:
    """Never record mail with an address or domain, tenant-wide or for one staff member."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant)
        staff = directory.find_staff(session, tenant, args.staff) if args.staff else None
        row = directory.add_never_log(session, tenant, args.pattern, staff=staff)
        scope = f"staff member {staff.username}" if staff else f"tenant {tenant.name}"
        out(f"never log {row.pattern} for {scope}")
    return EXIT_OK


ACTIVITY_COLUMNS = ["id", "tenant", "occurred_at", "direction", "staff", "from", "subject"]


def cmd_activities_list(args: argparse.Namespace, settings: Settings) -> int:
    """List recorded activities, newest first."""
    with session_scope(settings) as session:
        tenant = directory.find_tenant(session, args.tenant) if args.tenant else None
        rows = queries.activities(session, tenant, limit=args.limit)
    emit(rows, ACTIVITY_COLUMNS, as_json=args.json, empty="no activities")
    return EXIT_OK


def cmd_activities_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one activity in full."""
    with session_scope(settings) as session:
        record = queries.activity(session, args.id)
    show(
        [record],
        {
            "participants": ["role", "kind", "address", "name"],
            "sources": ["message", "queue_id", "kind", "rcpt", "staff", "mail_from"],
            "attachments": ["filename", "content_type", "size", "inline"],
            "trace": ["message", "time", "step", "decision", "detail"],
        },
        as_json=args.json,
    )
    return EXIT_OK


MESSAGE_COLUMNS = ["id", "received_at", "state", "mail_from", "rcpt_to", "reason"]


def cmd_messages_list(args: argparse.Namespace, settings: Settings) -> int:
    """List received messages with their state and reason."""
    state = MessageState(args.state) if args.state else None
    with session_scope(settings) as session:
        rows = queries.messages(session, state, limit=args.limit)
    emit(rows, MESSAGE_COLUMNS, as_json=args.json, empty="no messages")
    return EXIT_OK


def cmd_messages_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show one received message: session facts, routes and trace."""
    with session_scope(settings) as session:
        record = queries.message(session, args.id)
    show(
        [record],
        {
            "routes": ["rcpt", "kind", "tenant", "staff", "outcome", "activity"],
            "trace": ["time", "step", "decision", "detail"],
        },
        as_json=args.json,
    )
    return EXIT_OK


def cmd_messages_trace(args: argparse.Namespace, settings: Settings) -> int:
    """What each processing step decided about a message, and why."""
    with session_scope(settings) as session:
        rows = queries.trace(session, args.id)
    columns = ["time", "step", "decision", "detail"]
    emit(rows, columns, as_json=args.json, empty="no trace entries yet")
    return EXIT_OK


def cmd_quarantine_list(args: argparse.Namespace, settings: Settings) -> int:
    """List quarantined messages."""
    with session_scope(settings) as session:
        rows = queries.messages(session, MessageState.QUARANTINED, limit=args.limit)
    emit(rows, MESSAGE_COLUMNS, as_json=args.json, empty="quarantine is empty")
    return EXIT_OK


def cmd_quarantine_release(args: argparse.Namespace, settings: Settings) -> int:
    """Send a quarantined message back to processing (``--force``: record it regardless)."""
    with session_scope(settings) as session:
        quarantine.release(session, args.id, force=args.force)
    how = " (forced: it will be recorded despite the policy)" if args.force else ""
    out(f"message {args.id} released for processing{how}")
    return EXIT_OK


def cmd_quarantine_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a quarantined message and, unless shared, its raw bytes."""
    with session_scope(settings) as session:
        removed = quarantine.delete(session, BlobStore(settings.storage.blob_dir), args.id)
    blob = "and its raw message" if removed else "(its raw bytes are still referenced)"
    out(f"message {args.id} deleted {blob}")
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------


def _add_directory_commands(commands: Any) -> None:
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
    register_relay_staff_commands(staff)

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

    company = group(commands, "company", "contacts' companies and their domains")
    sub = command(company, "add", cmd_company_add, "add a company")
    sub.add_argument("tenant")
    sub.add_argument("name")
    sub.add_argument("--domain", action="append", metavar="D")
    sub = json_flag(command(company, "list", cmd_company_list, "list a tenant's companies"))
    sub.add_argument("tenant")

    never_log = group(commands, "never-log", "addresses and domains never recorded")
    sub = command(never_log, "add", cmd_never_log_add, "never record an address or domain")
    sub.add_argument("tenant")
    sub.add_argument("pattern", help="an address, or a domain")
    sub.add_argument("--staff", metavar="USER", help="only for this staff member")


def _add_mail_commands(commands: Any) -> None:
    acts = group(commands, "activities", "recorded email")
    sub = command(acts, "list", cmd_activities_list, "list activities, newest first")
    sub.add_argument("--tenant", metavar="T")
    limit_flag(json_flag(sub))
    sub = json_flag(command(acts, "show", cmd_activities_show, "show one activity"))
    sub.add_argument("id", type=int)

    msgs = group(commands, "messages", "every message received")
    sub = command(msgs, "list", cmd_messages_list, "list received messages, newest first")
    sub.add_argument("--state", choices=[s.value for s in MessageState])
    limit_flag(json_flag(sub))
    sub = json_flag(command(msgs, "show", cmd_messages_show, "show one received message"))
    sub.add_argument("id", type=int)
    sub = json_flag(command(msgs, "trace", cmd_messages_trace, "what each step decided"))
    sub.add_argument("id", type=int)

    quar = group(commands, "quarantine", "messages held back by a rule")
    limit_flag(json_flag(command(quar, "list", cmd_quarantine_list, "list quarantined")))
    sub = command(quar, "release", cmd_quarantine_release, "process a message again")
    sub.add_argument("id", type=int)
    sub.add_argument("--force", action="store_true", help="record it despite the policy")
    sub = command(quar, "delete", cmd_quarantine_delete, "delete a message for good")
    sub.add_argument("id", type=int)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; names follow DESIGN §10."""
    parser = argparse.ArgumentParser(
        prog="mailledger", description="Capture forwarded email as CRM activities."
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${config_module.CONFIG_ENV}, else built-ins)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command(commands, "serve", cmd_serve, "run every listener and worker in one process")
    json_flag(command(commands, "check-config", cmd_check_config, "the effective settings"))
    db = group(commands, "db", "database schema")
    command(db, "upgrade", cmd_db_upgrade, "apply schema migrations")
    demo = group(commands, "demo", "the demo tenant")
    command(demo, "init", cmd_demo_init, "create the schema and the demo tenant")
    sub = command(demo, "send", cmd_demo_send, "send the demo email to the capture listener")
    sub.add_argument("--to", default="richard@acme.capture.example", metavar="ADDRESS")
    sub.add_argument("--subject", default="Quote for the new office", metavar="TEXT")
    _add_directory_commands(commands)
    _add_mail_commands(commands)
    dns_commands.register(commands)
    retention_commands.register(commands)
    queue_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mailledger`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        err(f"configuration: {exc}")
        return EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args, settings)
    except (DirectoryError, AddressError, CommandError, quarantine.QuarantineError) as exc:
        err(str(exc))
    except queries.NotFoundError as exc:
        err(str(exc.args[0]))
    except SQLAlchemyError as exc:
        err(f"database: {exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        err("is the schema up to date? run `mailledger db upgrade`")
    return EXIT_REFUSED
