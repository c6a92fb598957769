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


_SHAPE_BITS = [
    b'Content-Type: multipart/mixed; boundary="a"',
    b"Content-Type: multipart/alternative;",
    b"\tboundary=b",
    b"content-type: MULTIPART/related; boundary=a",
    b"Content-Type: text/plain",
    b"Subject: x",
    b"--a",
    b"--a--",
    b"--b",
    b"--b--",
    b"--a \t",
    b"--b\r",
    b"--",
    b"-",
    b"text",
    b"",
    b"\r",
]
_ENDINGS = [b"\r\n", b"\n", b"\r\r\n", b"\r\n"]


def test_bytes_scan_is_the_line_scan() -> None:
    """Random multipart shapes, CR/LF variants, unclosed parts: the jumping scan of bytes gives
    the shape the line-by-line scan gives, and so does a file of the same bytes."""
    rng = random.Random(2046)
    nested = 0
    for _ in range(5000):
        lines = [rng.choice(_SHAPE_BITS) for _ in range(rng.randrange(0, 40))]
        raw = b"".join(line + rng.choice(_ENDINGS) for line in lines)
        if rng.random() < 0.3 and raw:
            raw = raw[: rng.randrange(len(raw))]  # a message cut anywhere
        expected = mimebounds._measure_lines(line.rstrip(b"\r") for line in raw.split(b"\n"))
        assert mimebounds.measure(raw) == expected, raw
        assert mimebounds.measure(io.BytesIO(raw)) == expected, raw
        nested += expected.depth > 1
    assert nested > 100  # the shapes did nest


def test_delimiters_in_a_large_body_are_found() -> None:
    """A long base64-like body between delimiters: every part is counted, nothing past the end."""
    body = b"QUJD" * 19 + b"\r\n"
    raw = b'Content-Type: multipart/mixed; boundary="z"\r\n\r\npreamble\r\n' + b"".join(
        b"--z\r\nContent-Type: application/pdf\r\n\r\n" + body * 500 for _ in range(7)
    )
    raw += b"--z--\r\n--z\r\n"  # after the close: not a part
    assert mimebounds.measure(raw) == mimebounds.MimeShape(depth=1, parts=8)
