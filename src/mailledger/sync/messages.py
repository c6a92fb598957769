"""Messages as a pass fetches them, and the headers-only stand-in for one too large to fetch.

A message over ``[sync] max_message_bytes`` is never read whole (memory stays bounded): its
header section is fetched alone and recorded with a short note in place of the body, so the
email is still on the client's timeline, with who wrote to whom and when, and the user knows
where to find the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from mailledger.mail.headerscan import header_end, message_id_in_head

NOTE_HEADER = "X-Mailledger-Note"
HEADER_SCAN_BYTES = 65536  # how far into a message its Return-Path is looked for
_RETURN_PATH = re.compile(rb"^return-path[ \t]*:[ \t]*<?([^>\r\n]*)>?", re.I | re.M)
# Header fields that describe the body left out: they would describe the note instead.
_BODY_FIELDS = re.compile(
    rb"^(content-type|content-transfer-encoding|content-disposition|mime-version)[ \t]*:"
    rb"[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class Fetched:
    """One message read from a folder: its UID, bytes and Message-ID."""

    uid: int
    raw: bytes
    message_id: str  # from the header section, without <>; "" when it has none
    size: int  # the size the server gave (RFC822.SIZE)
    internal_date: datetime | None = None
    headers_only: bool = False


def headers_only(header: bytes, size: int, limit: int, folder: str) -> bytes:
    """A message made of ``header`` and a note saying the body was left out, and why.

    The fields that describe the original body (Content-Type and kin) are dropped, so the
    note is read as the plain text it is; everything else (From, To, Date, Message-ID,
    Authentication-Results) stays as the server gave it.
    """
    head = header.rstrip(b"\r\n")
    head = _BODY_FIELDS.sub(b"", head + b"\r\n").rstrip(b"\r\n")
    note = (
        f"This message is {size} bytes, more than the {limit} bytes mailbox sync fetches "
        f"([sync] max_message_bytes), so only its header was recorded. The whole message is "
        f"in the mailbox, in the folder {folder}."
    )
    fields = (
        f"{NOTE_HEADER}: headers only, {size} bytes over the sync limit\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
    ).encode()
    return head + b"\r\n" + fields + b"\r\n" + note.encode() + b"\r\n"


def message_id_of(raw_or_header: bytes) -> str:
    """The Message-ID of a message or its header section, as intake reads it."""
    return message_id_in_head(raw_or_header)


def return_path(raw: bytes) -> str:
    """The envelope sender the receiving server recorded (Return-Path), or "".

    Only the header section is read: a line of the body that starts with "Return-Path:"
    (a quoted message) is not the envelope, and scanning every body line was an eighth of
    a backfill's CPU.
    """
    end = header_end(raw, HEADER_SCAN_BYTES)
    match = _RETURN_PATH.search(raw, 0, end if end >= 0 else min(len(raw), HEADER_SCAN_BYTES))
    if match is None:
        return ""
    return match.group(1).decode("utf-8", "replace").strip()[:320]
