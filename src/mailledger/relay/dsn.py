"""Delivery status notifications (RFC 3464) for mail the relay could not deliver.

A DSN is a ``multipart/report; report-type=delivery-status`` message (RFC 6522): a part a
person reads, a ``message/delivery-status`` part a program reads, and the original message's
headers as ``text/rfc822-headers``. It goes from the null reverse path (``MAIL FROM:<>``) to the
original envelope sender, so it can never itself be bounced; and no DSN is ever made for a
message with a null sender or for a DSN (RFC 3461 §6.2, RFC 5321 §4.5.5), which is how bounce
loops are avoided. The bytes are composed by hand with CRLF line ends, never a bare LF.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Final

from sqlalchemy.orm import Session

from mailledger.mail.replies import parse_reply
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import OutboundKind, OutboundMessage, utcnow
from mailledger.store.outbox import enqueue

# The headers we quote back are capped, so a huge header block can't make a huge bounce.
MAX_QUOTED_HEADER_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient the relay gave up on, with the reply that decided it."""

    address: str
    code: int  # the SMTP reply code, remote or our own (556 for a null MX…)
    text: str  # the reply text, starting with its enhanced status code when it had one
    remote_mta: str = ""  # the host that answered, "" for a decision of our own
    last_attempt: datetime | None = None

    @property
    def status(self) -> str:
        """The RFC 3463 status: the reply's enhanced code, else one from its class."""
        return enhanced_status(self.code, self.text)


def enhanced_status(code: int, text: str) -> str:
    """The enhanced status code (RFC 3463) a reply carries, or the generic one for its class."""
    carried = parse_reply(code, text).status
    if carried:
        return carried
    return f"{str(code)[0]}.0.0" if 400 <= code < 600 else "5.0.0"


def wants_dsn(row: OutboundMessage) -> bool:
    """Whether a failure of ``row`` may be reported to its sender (never DSN a DSN or ``<>``)."""
    return bool(row.mail_from) and row.kind is not OutboundKind.DSN


def _clean(text: str) -> str:
    # A remote reply may span lines or carry control bytes; a DSN field is one printable line.
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _ascii(text: str) -> str:
    return _clean(text).encode("ascii", "replace").decode("ascii")


def original_headers(raw: bytes) -> bytes:
    """The header block of ``raw`` (without the blank line), capped and ending with CRLF."""
    end = raw.find(b"\r\n\r\n")
    headers = raw if end < 0 else raw[: end + 2]
    if len(headers) > MAX_QUOTED_HEADER_BYTES:
        cut = headers.rfind(b"\r\n", 0, MAX_QUOTED_HEADER_BYTES)
        headers = headers[: cut + 2] if cut > 0 else b""
    if headers and not headers.endswith(b"\r\n"):
        headers += b"\r\n"
    return headers


def build_dsn(
    *,
    hostname: str,
    sender: str,
    original: bytes,
    recipients: Sequence[FailedRecipient],
    arrival: datetime,
    queue_id: str = "",
    now: datetime | None = None,
) -> bytes:
    """The bytes of a DSN telling ``sender`` that ``recipients`` failed (Action: failed)."""
    if not recipients:
        raise ValueError("a DSN needs at least one failed recipient")
    now = now or utcnow()
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    host = _ascii(hostname)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{_ascii(sender)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}.dsn@{host}>",
        # RFC 3834 §5: a machine-generated reply; auto-responders must not answer it.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at {host}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "It is attached below (headers only). The reasons:",
        "",
    ]
    for rcpt in recipients:
        where = f" (at {_ascii(rcpt.remote_mta)})" if rcpt.remote_mta else ""
        lines.append(f"<{_ascii(rcpt.address)}>{where}:")
        lines.append(f"    {rcpt.code} {_ascii(rcpt.text)}")
        lines.append("")
    lines += [
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        # Per-message fields (RFC 3464 §2.2).
        f"Reporting-MTA: dns; {host}",
    ]
    if queue_id:
        lines.append(f"X-Mailledger-Queue-ID: {_ascii(queue_id)}")
    lines.append(f"Arrival-Date: {format_datetime(arrival)}")
    for rcpt in recipients:
        # Per-recipient fields (RFC 3464 §2.3), each group after a blank line.
        lines += [
            "",
            f"Final-Recipient: rfc822; {_ascii(rcpt.address)}",
            "Action: failed",
            f"Status: {rcpt.status}",
        ]
        if rcpt.remote_mta:
            lines.append(f"Remote-MTA: dns; {_ascii(rcpt.remote_mta)}")
        lines.append(f"Diagnostic-Code: smtp; {rcpt.code} {_ascii(rcpt.text)}")
        if rcpt.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {format_datetime(rcpt.last_attempt)}")
    headers = original_headers(original)
    eight_bit = any(b > 0x7F for b in headers)
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
    ]
    if eight_bit:
        lines.append("Content-Transfer-Encoding: 8bit")
    lines.append("")
    head = ("\r\n".join(lines) + "\r\n").encode("ascii")
    return head + headers + f"\r\n--{boundary}--\r\n".encode("ascii")


def queue_dsn(
    session: Session,
    blobs: BlobBackend,
    row: OutboundMessage,
    recipients: Sequence[FailedRecipient],
    *,
    hostname: str,
    original: bytes,
) -> list[OutboundMessage]:
    """Queue a DSN for ``row``'s failed ``recipients`` in the caller's transaction.

    Returns the queued rows; none when loop rules forbid a DSN (null sender, or ``row`` is
    itself a DSN).
    """
    if not recipients or not wants_dsn(row):
        return []
    data = build_dsn(
        hostname=hostname,
        sender=row.mail_from,
        original=original,
        recipients=recipients,
        arrival=row.created_at,
        queue_id=row.queue_id,
    )
    return enqueue(
        session,
        blobs,
        raw=data,
        mail_from="",
        rcpt_to=[row.mail_from],
        kind=OutboundKind.DSN,
        tenant_id=row.tenant_id,
        staff_id=row.staff_id,
    )
