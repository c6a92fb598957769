"""``mailledger demo init | send``: the demo tenant `make run` creates, and its demo email.

The tenant's data lives here too: tests and benchmarks seed the same world with ``seed_demo``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, EXIT_REFUSED, command, err, group, out, session_scope

if TYPE_CHECKING:
    from email.message import EmailMessage

    from sqlalchemy.orm import Session

    from mailledger.config import Settings

DEMO_TENANT = "acme"
DEMO_CAPTURE_DOMAIN = "acme.capture.example"
DEMO_CUSTOMER_DOMAIN = "acme.example"
DEMO_STAFF = "richard"
DEMO_STAFF_ADDRESSES = ("richard@acme.example", "richard.smith@gmail.com")
DEMO_CONTACT = "carol@client.example"
DEMO_COMPANY = "Client Co"
DEMO_COMPANY_DOMAIN = "client.example"


@dataclass(frozen=True, slots=True)
class DemoAddresses:
    """What the demo prints: the addresses to try."""

    user_capture: str
    log_capture: str
    staff_address: str
    contact_address: str


def seed_demo(session: Session) -> DemoAddresses:
    """Create the demo tenant, staff member, company and contact unless they exist."""
    from sqlalchemy import select

    from mailledger.mail.addresses import capture_address
    from mailledger.store import directory
    from mailledger.store.models import Tenant

    existing = session.scalars(select(Tenant).where(Tenant.name == DEMO_TENANT)).one_or_none()
    if existing is None:
        tenant = directory.add_tenant(
            session, DEMO_TENANT, DEMO_CAPTURE_DOMAIN, [DEMO_CUSTOMER_DOMAIN]
        )
        directory.add_staff(
            session, tenant, DEMO_STAFF, list(DEMO_STAFF_ADDRESSES), name="Richard Smith"
        )
        directory.add_company(session, tenant, DEMO_COMPANY, [DEMO_COMPANY_DOMAIN])
        directory.add_contact(
            session, tenant, [DEMO_CONTACT], name="Carol Client", company=DEMO_COMPANY
        )
    return DemoAddresses(
        user_capture=capture_address(DEMO_STAFF, DEMO_CAPTURE_DOMAIN),
        log_capture=capture_address("log", DEMO_CAPTURE_DOMAIN),
        staff_address=DEMO_STAFF_ADDRESSES[0],
        contact_address=DEMO_CONTACT,
    )


def demo_email(subject: str = "Quote for the new office") -> EmailMessage:
    """The email `mailledger demo send` sends: Carol, a known contact, writing to Richard."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    msg["Message-ID"] = make_msgid(domain=DEMO_COMPANY_DOMAIN)
    msg["Date"] = formatdate(localtime=True)
    msg["From"] = f"Carol Client <{DEMO_CONTACT}>"
    msg["To"] = f"Richard Smith <{DEMO_STAFF_ADDRESSES[0]}>"
    msg["Subject"] = subject
    msg.set_content(
        "Hello Richard,\n\nCould you send us the quote for the new office by Friday?\n\nCarol\n"
    )
    return msg


# --- commands ---------------------------------------------------------------------------------


def _capture_listener(settings: Settings) -> tuple[str, int]:
    """Where the demo sends to: the first capture listener, a wildcard read as loopback."""
    from mailledger.config import split_listen

    host, port = split_listen(settings.capture.listen[0]) if settings.capture.listen else ("", 0)
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising a wildcard, not binding one
        host = "127.0.0.1"
    return host, port


def cmd_demo_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the schema and the demo tenant, then say what to send where."""
    from mailledger.store.migrate import upgrade
    from mailledger.store.secretbox import ensure_key_file

    upgrade(settings.database.url)
    ensure_key_file(settings.secrets.key_file)
    with session_scope(settings) as session:
        addresses = seed_demo(session)
    host, port = _capture_listener(settings)
    config_hint = f" --config {args.config}" if args.config else ""
    out(
        DEMO_TEXT.format(
            program=command_name(),
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
    import smtplib

    from mailledger.store.directory import DirectoryError

    if not settings.capture.listen:
        raise DirectoryError("[capture] listen is empty: nothing to send to")
    host, port = _capture_listener(settings)
    message = demo_email(args.subject)
    try:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            refused = smtp.send_message(message, from_addr=DEMO_CONTACT, to_addrs=[args.to])
    except smtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients
    except smtplib.SMTPResponseException as exc:
        # The server is there and said no: say what it said, not that it may be down.
        err(f"{host}:{port} refused the demo email: {_reply(exc.smtp_code, exc.smtp_error)}")
        return EXIT_REFUSED
    except (OSError, smtplib.SMTPException) as exc:
        err(f"could not deliver to {host}:{port}: {exc} (is `mailledger serve` running?)")
        return EXIT_REFUSED
    if refused:
        for rcpt, (code, text) in refused.items():
            err(f"{host}:{port} refused {rcpt}: {_reply(code, text)}")
        return EXIT_REFUSED
    out(f"sent {message['Message-ID']} to {args.to} via {host}:{port}")
    return EXIT_OK


def _reply(code: int, text: bytes | str) -> str:
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return f"{code} {shown}"


def command_name() -> str:
    """How the user runs this command: ``mailledger`` when it is on PATH, else its real path.

    ``make run`` calls ``.venv/bin/mailledger``, which is on no PATH until the virtualenv is
    activated, so the banner must not tell the user to run a bare ``mailledger``.
    """
    import shutil
    import sys

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "__main__.py":
        return f"{_shown(Path(sys.executable))} -m mailledger"
    on_path = shutil.which("mailledger")
    if argv0 is not None and argv0.name == "mailledger":
        if on_path is not None and Path(on_path).resolve() == argv0.resolve():
            return "mailledger"
        return _shown(argv0)
    if on_path is not None:
        return "mailledger"
    script = Path(sys.executable).with_name("mailledger")
    return _shown(script) if script.exists() else "mailledger"


def _shown(path: Path) -> str:
    """A path as short as it can be while still runnable from here (never a bare name)."""
    absolute = path.absolute()
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(relative) if relative.parent != Path() else f"./{relative}"


DEMO_TEXT = """\
Demo tenant "acme" is ready.

  forward to (user capture):  {user_capture}   ({staff}'s own address: {staff_address})
  BCC (log capture):          {log_capture}
  a known contact:            {contact}
  capture listener:           {host}:{port}

The demo configuration trusts mail from loopback as if an authenticated forwarder sent it
([verify] demo_trust_loopback, DEMO ONLY; production checks SPF, DKIM, ARC and DMARC).

While `mailledger serve` runs, send the demo email with

  {program}{config} demo send

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

  {program}{config} messages list
  {program}{config} activities list --json"""


def register(commands: Any) -> None:
    """Add the ``demo`` command group to the CLI."""
    demo = group(commands, "demo", "the demo tenant")
    command(demo, "init", cmd_demo_init, "create the schema and the demo tenant")
    sub = command(demo, "send", cmd_demo_send, "send the demo email to the capture listener")
    sub.add_argument("--to", default="richard@acme.capture.example", metavar="ADDRESS")
    sub.add_argument("--subject", default="Quote for the new office", metavar="TEXT")
