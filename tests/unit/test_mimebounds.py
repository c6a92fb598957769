"""The MIME measure reads lines one at a time, exactly as splitting at LF would give them."""

from __future__ import annotations

import io
import random

import pytest

from mailledger.mail import mimebounds


def test_lines_are_split_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    monkeypatch.setattr(mimebounds, "SPLIT_BYTES", 10)  # both ways of reading are used
    pieces = [b"a", b"\r", b"\n", b"\r\n", b"--b", b" ", b""]
    for _ in range(2000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        expected = [line.rstrip(b"\r") for line in raw.split(b"\n")]
        assert list(mimebounds._lines(raw)) == expected, raw
        assert list(mimebounds._lines(io.BytesIO(raw))) == expected, raw


def test_nested_multiparts_are_measured() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\n"
        b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n"
        b"--inner--\r\n"
        b"--outer\r\nContent-Type: application/pdf\r\n\r\nJVBERi0=\r\n"
        b"--outer--\r\n"
    )
    assert mimebounds.measure(raw) == mimebounds.MimeShape(depth=2, parts=5)
