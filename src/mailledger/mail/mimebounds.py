"""Bound a message's MIME structure before Python's ``email`` package sees it (DESIGN §4).

The stdlib parser recurses once per nesting level and slows down with many parts, so hostile
input must be measured first. This scanner reads the raw bytes once, line by line, keeping a
stack of open multipart boundaries: linear time, constant recursion.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:", re.IGNORECASE)
_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)
_BOUNDARY = re.compile(rb"""boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))""", re.I)


@dataclass(frozen=True, slots=True)
class MimeShape:
    """How deep the multipart nesting goes and how many parts the message has."""

    depth: int
    parts: int


def _header_block_boundary(lines: list[bytes]) -> bytes | None:
    """The boundary a header block declares, if its Content-Type is multipart."""
    value = b""
    collecting = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if collecting:
                value += line
            continue
        if collecting:
            break
        if _CONTENT_TYPE.match(line):
            collecting = True
            value = line
    if not value or not _MULTIPART.search(value):
        return None
    found = _BOUNDARY.search(value)
    if found is None:
        return None
    return found.group(1) or found.group(2)


SPLIT_BYTES = 256 * 1024  # above this, lines are read one at a time


def _lines(raw: bytes | BinaryIO) -> Iterable[bytes]:
    """The lines of ``raw`` without their CR LF: ``raw.split(b"\\n")``, each less its final CRs.

    Split at once for everyday sizes (twice as fast), one at a time for big messages and for
    a file: the split would hold every line of a 10 MB message at once, about 15 MB more.
    """
    if not isinstance(raw, bytes):
        return _file_lines(raw)
    if len(raw) <= SPLIT_BYTES:
        return [line.rstrip(b"\r") for line in raw.split(b"\n")]
    return _file_lines(io.BytesIO(raw))  # BytesIO shares the bytes


def _file_lines(stream: BinaryIO) -> Iterator[bytes]:
    ended = True  # an empty file is one empty line, as b"".split(b"\n") is
    for line in stream:
        ended = line.endswith(b"\n")
        yield (line[:-1] if ended else line).rstrip(b"\r")
    if ended:
        yield b""  # what follows the last LF, as split gives it


def measure(raw: bytes | BinaryIO) -> MimeShape:
    """Measure nesting depth and part count the way a MIME parser would see them.

    ``raw`` may be a file, read from where it stands to its end, line by line. Bytes are
    scanned by ``_measure_bytes``, which gives the same shape without visiting each line.
    """
    if isinstance(raw, bytes):
        return _measure_bytes(raw)
    return _measure_lines(_lines(raw))


def _measure_bytes(raw: bytes) -> MimeShape:
    """``_measure_lines`` of ``raw``'s lines, skipping the lines that cannot change the shape.

    Inside a body only a line starting with ``--`` may be a delimiter, and with no multipart
    open nothing may; so after each header block the scan jumps to the next ``\n--`` (or
    stops), instead of splitting every line of a base64 attachment and looking at it in
    Python: most of the scan's time. Lines are ``raw.split(b"\n")``, each less its final CRs,
    exactly as ``_lines`` gives them.
    """
    stack: list[bytes] = []
    max_depth = 0
    parts = 1
    size = len(raw)
    pos = 0  # where the next line starts; size + 1 once the last line has been read
    while pos <= size:
        # A header block: its lines up to an empty one (or the end of the message).
        headers: list[bytes] = []
        ended = False
        while pos <= size:
            end = raw.find(b"\n", pos)
            stop = size if end < 0 else end
            line = raw[pos:stop].rstrip(b"\r")
            pos = stop + 1
            if not line:
                ended = True
                break
            headers.append(line)
        if not ended:
            break
        boundary = _header_block_boundary(headers)
        if boundary is not None:
            stack.append(boundary)
            max_depth = max(max_depth, len(stack))
        # A body: only its delimiter lines count, and only while a multipart is open.
        while stack and pos <= size:
            if not raw.startswith(b"--", pos):
                found = raw.find(b"\n--", pos)
                if found < 0:
                    return MimeShape(depth=max_depth, parts=parts)
                pos = found + 1
            end = raw.find(b"\n", pos)
            stop = size if end < 0 else end
            token = raw[pos + 2 : stop].rstrip(b"\r").rstrip(b" \t")
            pos = stop + 1
            opened = _delimit(stack, token)
            if opened:
                parts += 1
                break  # a part's header block follows
        if not stack:
            break  # nothing open: no later line can change the shape
    return MimeShape(depth=max_depth, parts=parts)


def _delimit(stack: list[bytes], token: bytes) -> bool:
    """Apply a ``--token`` line to the open multiparts; True when it opens a new part.

    A delimiter may close an inner multipart or an outer one (RFC 2046 §5.1.1).
    """
    for level in range(len(stack) - 1, -1, -1):
        boundary = stack[level]
        if token == boundary:
            del stack[level + 1 :]
            return True
        if token == boundary + b"--":
            del stack[level:]
            return False
    return False


def _measure_lines(lines: Iterable[bytes]) -> MimeShape:
    """The shape of a message given line by line (without CR LF): the reference scan."""
    stack: list[bytes] = []
    max_depth = 0
    parts = 1
    headers: list[bytes] = []
    in_headers = True
    for line in lines:
        if in_headers:
            if line:
                headers.append(line)
                continue
            in_headers = False
            boundary = _header_block_boundary(headers)
            headers = []
            if boundary is not None:
                stack.append(boundary)
                max_depth = max(max_depth, len(stack))
            continue
        if not line.startswith(b"--") or not stack:
            continue
        if _delimit(stack, line[2:].rstrip(b" \t")):
            parts += 1
            in_headers = True
    return MimeShape(depth=max_depth, parts=parts)


def check(raw: bytes | BinaryIO, *, max_depth: int, max_parts: int) -> str | None:
    """A quarantine reason when the structure is over the limits, else None."""
    shape = measure(raw)
    if shape.depth > max_depth:
        return f"mime-too-deep: {shape.depth} nested multiparts (limit {max_depth})"
    if shape.parts > max_parts:
        return f"mime-too-many-parts: {shape.parts} parts (limit {max_parts})"
    return None
