"""Building test emails and storing them as the intake would, without an SMTP session."""

from __future__ import annotations

import secrets
from email.message import EmailMessage
from email.utils import format_datetime

from sqlalchemy.orm import Session, sessionmaker

from mailledger.routing.routes import RecipientRouter, Refusal
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import MessageRoute, ReceivedMessage, TraceEntry, utcnow


def make_email(
    *,
    sender: str = "Carol Client <carol@client.example>",
    to: str = "Richard Smith <richard@acme.example>",
    cc: str | None = None,
    subject: str = "Quote for the spring order",
    body: str = "Hello Richard,\r\nplease send the quote.\r\nCarol\r\n",
    message_id: str | None = None,
    html: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, str, bytes]] | None = None,
) -> bytes:
    """A realistic email as CRLF bytes; ``message_id=""`` leaves the header out."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    if message_id is None:
        message_id = f"{secrets.token_hex(8)}@client.example"
    if message_id:
        msg["Message-ID"] = f"<{message_id}>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, payload in attachments or []:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def store_received(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    raw: bytes,
    rcpts: list[str],
    *,
    mail_from: str = "carol@client.example",
) -> int:
    """Store a message the way intake does (blob, row, routes) and return its id."""
    router = RecipientRouter(sessions)
    routes = []
    for rcpt in rcpts:
        decision = router.route(rcpt)
        if isinstance(decision, Refusal):
            raise ValueError(f"{rcpt} refused: {decision.reply}")  # noqa: TRY004 - a refusal, not a type
        routes.append(decision)
    with sessions.begin() as session:
        message = ReceivedMessage(
            queue_id=secrets.token_hex(10),
            trace_id=secrets.token_hex(6),
            blob=blobs.put(raw),
            size=len(raw),
            peer="127.0.0.1:1",
            helo="test",
            mail_from=mail_from,
            rcpt_to=rcpts,
        )
        session.add(message)
        session.flush()
        for route in routes:
            session.add(
                MessageRoute(
                    message_id=message.id,
                    tenant_id=route.tenant_id,
                    kind=route.kind,
                    staff_id=route.staff_id,
                    rcpt=route.rcpt,
                )
            )
        session.add(TraceEntry(message_id=message.id, step="intake", decision="stored"))
        return message.id
