"""Records as DNS admins paste them: zone-file lines and TXT character-strings.

Kept apart from what the records say (``records``) and how they are checked (``check``), so the
key generator, the record printer and the check's fixes all quote a record the same way.
"""

from __future__ import annotations

from typing import Final

# RFC 1035 §3.3: one <character-string> holds at most 255 octets; a longer TXT record (an RSA
# DKIM key) is several strings in one record, which verifiers join without spaces
# (RFC 6376 §3.6.2.2, RFC 7208 §3.3).
MAX_STRING_BYTES: Final = 255
DEFAULT_TTL: Final = 3600


def character_strings(text: str) -> list[str]:
    """Split a TXT value into strings of at most 255 bytes, never inside a UTF-8 character."""
    data = text.encode("utf-8")
    if not data:
        return [""]
    parts: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + MAX_STRING_BYTES, len(data))
        # Step back off UTF-8 continuation bytes (0b10xxxxxx) so each piece decodes alone.
        while end < len(data) and end > start and data[end] & 0xC0 == 0x80:
            end -= 1
        parts.append(data[start:end].decode("utf-8"))
        start = end
    return parts


def quote(piece: str) -> str:
    """One character-string in zone-file syntax (RFC 1035 §5.1: \\" and \\\\ escaped)."""
    return '"' + piece.replace("\\", "\\\\").replace('"', '\\"') + '"'


def txt_value(text: str) -> str:
    """A TXT record's value as zone-file text: its strings, quoted, separated by spaces."""
    return " ".join(quote(p) for p in character_strings(text))


def fqdn(name: str) -> str:
    """A name with its final dot, as zone files need it to not append the origin."""
    return name.rstrip(".") + "."


def zone_line(name: str, rdtype: str, value: str, ttl: int = DEFAULT_TTL) -> str:
    """One resource record as a zone-file line; TXT values are quoted and split."""
    data = txt_value(value) if rdtype.upper() == "TXT" else value
    return f"{fqdn(name)}\t{ttl}\tIN\t{rdtype.upper()}\t{data}"
