"""A message's Message-ID read from its header section, before any parse.

Intake records it for every message, also for those quarantined before a full parse (a MIME
bomb, a malformed header block), so that the ID a sender knows finds the message (DESIGN §10:
every received message has a ``message_id``). Processing later sets the one its parse reads.
The scan is bounded: it looks at the header section only (up to the first empty line, and at
most ``limit`` bytes), unfolds only the first Message-ID field, and keeps what stands between
its first ``<`` and ``>`` (RFC 5322 §3.6.4), at most 998 characters (RFC 5322 §2.1.1).
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_LIMIT: Final = 256 * 1024  # [capture] max_header_bytes' default
MAX_ID_CHARS: Final = 998
# The first Message-ID field and its continuation lines (RFC 5322 §2.2.3 folding).
_FIELD: Final = re.compile(rb"^message-id[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_ANGLED: Final = re.compile(rf"<([^<>\s]{{1,{MAX_ID_CHARS}}})>")
# The end of the header section: an empty line. Searched from its second line break, then
# stepped back over a CR: ``\r?\n\r?\n`` gives the same start but is tried at every byte.
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")


def header_end(data: bytes, limit: int | None = None) -> int:
    """Where the empty line ending the header section starts (the line break ending its last
    field, LF or CRLF alike), looked for in the first ``limit`` bytes; -1 if none there."""
    found = _BLANK_LINE.search(data, 0, len(data) if limit is None else limit)
    if found is None:
        return -1
    start = found.start()
    return start - 1 if start and data[start - 1] == 0x0D else start


def body_start(data: bytes) -> int:
    """Where the body begins: just after the empty line ending the header section; -1 if
    there is none."""
    found = _BLANK_LINE.search(data)
    return found.end() if found is not None else -1


def message_id_in_head(head: bytes, limit: int = DEFAULT_LIMIT) -> str:
    """The Message-ID (without ``<>``) in the header section of ``head``, or "" when none."""
    window = head[:limit]
    end = header_end(window)
    section = window[:end] if end >= 0 else window
    # A header section starts at the first byte: a message that opens with an empty line has
    # no header fields, and no ID to find in what is its body.
    if section.startswith((b"\r\n", b"\n")):
        return ""
    field = _FIELD.search(section)
    if field is None:
        return ""
    value = field.group(1).decode("utf-8", "replace")
    angled = _ANGLED.search(value)
    if angled is not None:
        return angled.group(1)
    bare = " ".join(value.split())  # an ID without angle brackets, as some senders write it
    if not bare or len(bare) > MAX_ID_CHARS or any(c in bare for c in " <>"):
        return ""
    return bare
