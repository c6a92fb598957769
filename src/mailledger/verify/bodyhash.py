"""DKIM and ARC body hashes (RFC 6376 §3.4, §3.7), each canonicalization hashed once, in pieces.

dkimpy splits the whole message into lines to find its body and then canonicalizes that body
again for every signature it checks. A forwarded message carries the author's DKIM signature
and the forwarder's ARC message signature, usually over the same relaxed body, and for a 10 MB
message each pass held several whole copies of the body at once (about 37 MB above the
message itself). Here the body is read in pieces of about a megabyte that end at a line end,
each canonicalization is computed once per hash and length, and dkimpy is handed only the
header section (``signatures``).

The result is byte for byte dkimpy's own ``canonicalize_body`` of dkimpy's own body: the body
starts after the first empty line, each ``\\r?\\n`` becomes CRLF, relaxed removes blanks before
a line end and folds runs of blanks, trailing empty lines are dropped, and a body that does
not end in CRLF gets one (tests compare the two on random bodies).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

PIECE_BYTES = 1024 * 1024
SIMPLE = b"simple"
RELAXED = b"relaxed"
_CRLF = b"\r\n"
_HEADER_END = re.compile(rb"(?:^|\n)\r?\n")
_NEWLINE = re.compile(rb"\r?\n")
_BLANKS_BEFORE_CRLF = re.compile(rb"[\t ]+\r\n")
_BLANKS = re.compile(rb"[\t ]+")


def body_start(raw: bytes) -> int:
    """Where the body begins: after the first empty line, as dkimpy reads a message.

    A message without an empty line is all header, with an empty body.
    """
    end = _HEADER_END.search(raw)
    return len(raw) if end is None else end.end()


def _pieces(raw: bytes, start: int) -> Iterator[bytes]:
    """The body in pieces of about PIECE_BYTES, each ending just after a line feed (bar the last).

    A CRLF, a run of blanks before a line end and every ``\\r?\\n`` stay inside one piece, so
    every canonicalization step applies to the pieces one at a time.
    """
    size = len(raw)
    while start < size:
        stop = start + PIECE_BYTES
        if stop < size:
            newline = raw.find(b"\n", stop - 1)
            stop = size if newline < 0 else newline + 1
        yield raw[start:stop]
        start = stop


def _trailing_crlfs(piece: bytes) -> int:
    """How many CRLFs end the piece."""
    end = len(piece)
    while end >= 2 and piece.startswith(_CRLF, end - 2, end):
        end -= 2
    return (len(piece) - end) // 2


def _relaxed_lines(lines: bytes) -> bytes:
    """Relaxed body canonicalization of CRLF lines (RFC 6376 §3.4.4), dkimpy's two steps.

    Each step runs only where it can change something: a blank before a CRLF, then a tab or
    two blanks in a row. Most text has neither, and the regular expressions stopping at every
    single space between words were the largest item of a forward's checks.
    """
    if b" \r\n" in lines or b"\t\r\n" in lines:
        lines = _BLANKS_BEFORE_CRLF.sub(_CRLF, lines)
    if b"\t" in lines or b"  " in lines:
        lines = _BLANKS.sub(b" ", lines)
    return lines


def canonical_pieces(raw: bytes, start: int, algorithm: bytes) -> Iterator[bytes]:
    """The canonicalized body (``simple`` or ``relaxed``), piece by piece.

    Empty lines are held back until text follows them, so those at the very end are dropped;
    the body then ends with exactly one CRLF, except that relaxed makes an empty body empty.
    """
    relaxed = algorithm == RELAXED
    held = 0  # CRLFs seen at the end of what was given out, not given out yet
    any_text = False
    for piece in _pieces(raw, start):
        lines = piece
        if lines.count(b"\n") != lines.count(_CRLF):
            lines = _NEWLINE.sub(_CRLF, lines)
        if relaxed:
            lines = _relaxed_lines(lines)
        trailing = _trailing_crlfs(lines)
        text = lines[: len(lines) - 2 * trailing] if trailing else lines
        if text:
            if held:
                yield _CRLF * held
            yield text
            any_text = True
            held = trailing
        else:
            held += trailing
    if any_text or not relaxed:
        yield _CRLF


@dataclass
class BodyHashes:
    """The hashes of one message's body, computed on first asking and kept for the next signature.

    ``raw`` is the whole message; its body starts at ``start`` (``body_start``).
    """

    raw: bytes
    start: int
    _digests: dict[tuple[bytes, str, int | None], bytes] = field(default_factory=dict)
    _lengths: dict[bytes, int] = field(default_factory=dict)

    def digest(self, algorithm: bytes, hash_name: str, limit: int | None = None) -> bytes:
        """The hash of the canonicalized body, or of its first ``limit`` bytes (``l=``)."""
        key = (algorithm, hash_name, limit)
        found = self._digests.get(key)
        if found is not None:
            return found
        hasher = hashlib.new(hash_name)
        length = 0
        for piece in canonical_pieces(self.raw, self.start, algorithm):
            if limit is None or length < limit:
                hasher.update(piece if limit is None else piece[: limit - length])
            length += len(piece)
        self._lengths[algorithm] = length
        self._digests[key] = digest = hasher.digest()
        return digest

    def length(self, algorithm: bytes) -> int:
        """The canonicalized body's length in bytes (to see whether ``l=`` covers it)."""
        if algorithm not in self._lengths:
            self.digest(algorithm, "sha256")
        return self._lengths[algorithm]
