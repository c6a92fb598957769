"""Cheap checks on the raw DATA bytes, before anything parses them (DESIGN §4).

Python's ``email`` parser is quadratic or recursive on hostile input, and a bare CR or LF is
read differently by different parsers (the smuggling family of bugs), so these run first, on
bytes, with ``bytes.count``/``bytes.find`` and one precompiled pattern: a 10 MB message costs
milliseconds. Each check returns the refusal to answer, or ``None``.
"""

from __future__ import annotations

import re

from mailledger.config import CaptureSettings
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.smtp.spool import SpooledMessage

CRLF = b"\r\n"
# What follows a Received field's name: RFC 5322 §4.5.3 (obsolete syntax) still allows white
# space before the colon, and senders that use it must not slip past.
_COLON_AFTER_NAME = re.compile(rb"[ \t]*:")


def bare_newline(raw: bytes) -> Reply | None:
    """Refuse a CR or LF that is not part of a CRLF pair (RFC 5321 §2.3.8, §4.1.1.4).

    aiosmtpd splits DATA only on CRLF, so a lone LF or CR stays inside a line, where one
    parser sees a line break and another does not.
    """
    return _unpaired(raw.count(CRLF), raw.count(b"\n"), raw.count(b"\r"))


def _unpaired(crlf: int, lf: int, cr: int) -> Reply | None:
    """The refusal when the counts show a CR or LF outside a CRLF pair."""
    return replies.BARE_NEWLINE if lf != crlf or cr != crlf else None


def nul_byte(raw: bytes) -> Reply | None:
    """Refuse NUL anywhere: RFC 5322 §3.5 forbids it and C-based tools truncate at it."""
    return replies.NUL_BYTE if b"\0" in raw else None


def header_block(raw: bytes) -> bytes:
    """The header section: everything up to (and with) the CRLF before the first empty line."""
    if raw.startswith(CRLF):
        return b""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def header_size(raw: bytes, max_header_bytes: int) -> Reply | None:
    """Refuse a header section larger than the configured bound."""
    if raw.startswith(CRLF):
        return None
    # Only the first max_header_bytes (+ the blank line) need searching: a blank line found
    # there ends a header block within the bound.
    end = raw.find(b"\r\n\r\n", 0, max_header_bytes + 2)
    if end >= 0:
        return None
    if len(raw) <= max_header_bytes:
        return None  # a message that is all header, and small enough
    return replies.HEADERS_TOO_BIG


def received_count(raw: bytes, limit: int) -> int:
    """How many Received fields the header block holds, counting no further than ``limit + 1``.

    A field is "received", in any case (ASCII), at the start of a line (the block's first byte
    or after an LF), then the colon. Found with ``bytes.find`` on the lowered block: a
    multi-line regular expression tried at every byte of a Gmail forward's header section
    cost more than every other check together.
    """
    block = b"\n" + header_block(raw).lower()
    count = 0
    at = block.find(b"\nreceived")
    while at >= 0:
        end = at + len(b"\nreceived")
        if _COLON_AFTER_NAME.match(block, end) is not None:
            count += 1
            if count > limit:
                break
        at = block.find(b"\nreceived", end)
    return count


def too_many_hops(raw: bytes, max_received_headers: int) -> Reply | None:
    """Refuse a message that has passed too many relays: a loop (RFC 5321 §6.3)."""
    if received_count(raw, max_received_headers) > max_received_headers:
        return replies.TOO_MANY_HOPS
    return None


def screen(raw: bytes | SpooledMessage, capture: CaptureSettings) -> Reply | None:
    """Run every check in order; the first refusal wins, ``None`` means go on to store it.

    The newline check comes first: the later checks rely on lines ending in CRLF.
    """
    if isinstance(raw, SpooledMessage):
        return _screen_spooled(raw, capture)
    return (
        bare_newline(raw)
        or nul_byte(raw)
        or header_size(raw, capture.max_header_bytes)
        or too_many_hops(raw, capture.max_received_headers)
    )


def _screen_spooled(spooled: SpooledMessage, capture: CaptureSettings) -> Reply | None:
    """The same checks on a message on disk: counts kept while spooling, and its first bytes.

    The header checks read no further than the largest header section allowed (and its empty
    line), so in the first bytes they see what they would see in the whole message.
    """
    refusal = _unpaired(spooled.crlf, spooled.lf, spooled.cr) or (
        replies.NUL_BYTE if spooled.nul else None
    )
    if refusal is not None:
        return refusal
    head = spooled.first_bytes(capture.max_header_bytes + 4)
    return header_size(head, capture.max_header_bytes) or too_many_hops(
        head, capture.max_received_headers
    )
