"""One email, one activity: the keys that recognise the same email arriving by several paths."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from mailledger.mail.addresses import normalize
from mailledger.mail.parsing import ParsedMessage

MAX_KEY_ID_CHARS = 180
# Reply and forward prefixes in the languages our users' mail clients write (DESIGN §5).
_PREFIX = re.compile(
    r"^\s*(?:(?:re|fw|fwd|aw|sv|vs|wg|tr|antw|rif|r|ref|res|enc|odp|doorst)"
    r"(?:\[\d+\]|\(\d+\))?\s*(?::|\uff1a)\s*|\[[^\]]{0,40}\]\s*)+",
    re.IGNORECASE,
)
# What ``str.split()`` splits on, as the bytes the text is hashed as: every ASCII whitespace
# byte becomes a space; the wider whitespace characters are found by their UTF-8 sequences
# (tests/unit/test_content_key.py checks this list against ``str.isspace``).
_ASCII_SPACES = bytes(c for c in range(128) if chr(c).isspace())
_TO_SPACE = bytes.maketrans(_ASCII_SPACES, b" " * len(_ASCII_SPACES))
WIDE_SPACES = (
    "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WIDE_SPACES = tuple(space.encode("utf-8") for space in WIDE_SPACES)


def message_id_key(message_id: str) -> str:
    """The dedupe key for a Message-ID (long ones hashed to fit the column)."""
    if len(message_id) > MAX_KEY_ID_CHARS:
        return "mid:sha256:" + hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()
    return "mid:" + message_id


def content_key(parsed: ParsedMessage) -> str:
    """A checksum of what a forward or BCC keeps intact: parties, date, subject, text body.

    Forwarders add headers (Received, ARC, X-Forwarded-For), but the author's From, To, Cc,
    Date, Subject and text are the same email. The checksum stands in for a *missing*
    Message-ID only (the record step looks it up only then, or against activities recorded
    without one): two present, different Message-IDs are two emails however alike. Merging
    wrongly loses an email from the record; keeping a duplicate apart can be undone later.
    """
    digest = hashlib.sha256()
    sender = parsed.sender
    parts: list[str] = [normalize(sender) if sender else ""]
    parts.append(",".join(sorted(normalize(box) for box in (*parsed.to, *parsed.cc))))
    parts.append(parsed.date.isoformat() if parsed.date else "")
    parts.append(" ".join(parsed.subject.split()))
    for piece in parts:
        digest.update(piece.encode("utf-8", "replace"))
        digest.update(b"\0")
    digest.update(collapsed_spaces(parsed.body.text))
    digest.update(b"\0")
    return "sum:" + digest.hexdigest()


def collapsed_spaces(text: str) -> bytes:
    """``" ".join(text.split())`` as UTF-8 bytes, at a fraction of its cost on a long body.

    The split makes a string of every word (most of the checksum's time on a 10 KB body);
    this maps whitespace to spaces and squeezes their runs on the bytes instead. A CR is
    dropped where an LF follows it (the LF still separates the words), so a CRLF body needs
    no squeezing at all. Text holding a wider whitespace character (a no-break space) takes
    the split itself: the key is stored, so it must not change by a byte.
    """
    data = text.encode("utf-8", "replace")
    if not text.isascii() and any(space in data for space in _WIDE_SPACES):
        return " ".join(text.split()).encode("utf-8", "replace")
    returns = data.count(b"\r")
    drop = b"\r" if returns and returns == data.count(b"\r\n") else b""
    flat = data.translate(_TO_SPACE, drop)
    while b"  " in flat:
        flat = flat.replace(b"  ", b" ")
    return flat.strip(b" ")


def subject_key(subject: str) -> str:
    """The subject without Re:/Fw:/AW:/SV: prefixes and list tags, for threading."""
    previous = None
    text = subject
    while previous != text:
        previous = text
        text = _PREFIX.sub("", text)
    return " ".join(text.lower().split())


def parties_key(addresses: Iterable[str]) -> str:
    """The sorted external parties of a thread, so a subject alone never joins two threads."""
    return ",".join(sorted(set(addresses)))
