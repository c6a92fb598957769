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
    parts.append(" ".join(parsed.body.text.split()))
    for piece in parts:
        digest.update(piece.encode("utf-8", "replace"))
        digest.update(b"\0")
    return "sum:" + digest.hexdigest()


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
