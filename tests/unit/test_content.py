"""Attachments decoded a slice at a time are the email package's own decoded bytes."""

from __future__ import annotations

import base64
import os
import random
import tracemalloc
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser

import pytest

from mailledger.mail import content
from mailledger.mail.parsing import parse_message
from mailledger.testing.mail import make_email


def _leaf(body: bytes, encoding: str = "base64") -> Message:
    raw = (
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=q.pdf\r\n"
        + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + body
    )
    return BytesParser(policy=policy.compat32).parsebytes(raw)


_NOISE = [b"=", b"==", b" ", b"\r\n", b"\n", b"\r", b"*", b"\xe9", b"-", b"A", b"AB", b"ABC"]


@pytest.mark.parametrize("slice_chars", [4, 5, 8, 13])
def test_slices_decode_as_the_email_package(
    slice_chars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clean, unpadded, over-padded and damaged base64: what get_payload(decode=True) gives."""
    monkeypatch.setattr(content, "SLICE_CHARS", slice_chars)
    rng = random.Random(slice_chars)
    streamed = 0
    for _ in range(2000):
        data = os.urandom(rng.randint(0, 40))
        lines = base64.encodebytes(data).replace(b"\n", b"\r\n")
        if rng.random() < 0.5:
            at = rng.randint(0, len(lines))
            lines = lines[:at] + rng.choice(_NOISE) + lines[at:]
        if rng.random() < 0.2:
            lines = lines.rstrip(b"=\r\n")
        leaf = _leaf(lines)
        expected = leaf.get_payload(decode=True)
        assert b"".join(content._decoded(leaf)) == expected, lines
        payload = leaf.get_payload()
        streamed += len(payload) > slice_chars and content._base64_pieces(payload) is not None
    assert streamed > 500  # most clean payloads took the sliced path


def test_large_attachment_is_decoded_without_whole_copies() -> None:
    """A 7.5 MB file in 10 MB of base64: decoding holds about the file, not three copies more."""
    data = os.urandom(7_500_000)
    leaf = _leaf(base64.encodebytes(data).replace(b"\n", b"\r\n"))
    tracemalloc.start()
    try:
        pieces = content._decoded(leaf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert b"".join(pieces) == data
    assert len(pieces) > 1
    assert peak < len(data) + 3 * content.SLICE_CHARS


def test_parsed_attachment_keeps_its_bytes_and_size() -> None:
    data = os.urandom(3 * content.SLICE_CHARS // 2)
    raw = make_email(
        subject="Quote", body="see attached", attachments=[("q.pdf", "application/pdf", data)]
    )
    parsed = parse_message(raw, received_at=datetime.now(UTC), max_depth=10, max_parts=50)
    (part,) = parsed.body.attachments
    assert part.size == len(data)
    assert b"".join(part.pieces) == data
