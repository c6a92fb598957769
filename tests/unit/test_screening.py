"""The checks that run on raw DATA bytes before any parser sees them."""

from __future__ import annotations

import time

import pytest

from mailledger.config import CaptureSettings
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.smtp import screening

LIMITS = CaptureSettings(max_header_bytes=1024, max_received_headers=3)

HEAD = b"From: carol@client.example\r\nSubject: hi\r\n"


def received(n: int, name: bytes = b"Received") -> bytes:
    return b"".join(
        name + b": from relay%d by mx; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(n)
    )


CASES: list[tuple[str, bytes, Reply | None]] = [
    ("plain message", HEAD + b"\r\nbody\r\n", None),
    ("empty message", b"", None),
    ("no body, no blank line", HEAD, None),
    ("starts with blank line", b"\r\nbody only\r\n", None),
    ("bare LF in body", HEAD + b"\r\nline one\nline two\r\n", replies.BARE_NEWLINE),
    ("bare LF in header", b"Subject: a\nBcc: x@y\r\n\r\nbody\r\n", replies.BARE_NEWLINE),
    ("bare CR in body", HEAD + b"\r\nline one\rline two\r\n", replies.BARE_NEWLINE),
    ("CR CR LF", HEAD + b"\r\nline\r\r\n", replies.BARE_NEWLINE),
    ("LF before CRLF", HEAD + b"\r\nline\n\r\n", replies.BARE_NEWLINE),
    ("trailing bare LF", HEAD + b"\r\nbody\n", replies.BARE_NEWLINE),
    ("NUL in body", HEAD + b"\r\nbo\0dy\r\n", replies.NUL_BYTE),
    ("NUL in header", b"Subject: a\0b\r\n\r\nbody\r\n", replies.NUL_BYTE),
    ("bare LF wins over NUL", b"a\0b\nc\r\n", replies.BARE_NEWLINE),
    ("header at the limit", b"X: " + b"a" * (1024 - 5) + b"\r\n\r\nbody\r\n", None),
    (
        "header one byte over",
        b"X: " + b"a" * (1024 - 4) + b"\r\n\r\nbody\r\n",
        replies.HEADERS_TOO_BIG,
    ),
    ("all-header message at the limit", b"X: " + b"a" * (1024 - 5) + b"\r\n", None),
    ("all-header message over", b"X: " + b"a" * 1024 + b"\r\n", replies.HEADERS_TOO_BIG),
    ("big body, small header", HEAD + b"\r\n" + b"b" * 5000 + b"\r\n", None),
    ("Received at the limit", received(3) + HEAD + b"\r\nbody\r\n", None),
    ("Received over", received(4) + HEAD + b"\r\nbody\r\n", replies.TOO_MANY_HOPS),
    ("Received any case", received(4, b"rEcEiVeD") + b"\r\nbody\r\n", replies.TOO_MANY_HOPS),
    ("Received space before colon", received(4, b"Received ") + b"\r\n", replies.TOO_MANY_HOPS),
    ("Received in the body is not counted", HEAD + b"\r\n" + received(10), None),
    (
        "folded line mentioning Received is not a field",
        received(3) + b"X-Note: a\r\n received: no\r\n\r\nbody\r\n",
        None,
    ),
    ("X-Received is another field", received(3) + received(5, b"X-Received") + b"\r\n", None),
    ("Received-SPF is another field", received(3) + received(5, b"Received-SPF") + b"\r\n", None),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_screen(raw: bytes, expected: Reply | None) -> None:
    """Each input gets exactly the refusal its first failed check calls for, or none."""
    assert screening.screen(raw, LIMITS) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b""),
        (b"\r\nbody\r\n", b""),
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n", b"A: 1\r\nB: 2\r\n"),
        (b"A: 1\r\n", b"A: 1\r\n"),
    ],
)
def test_header_block(raw: bytes, expected: bytes) -> None:
    """The header block ends at the first empty line, and includes its last CRLF."""
    assert screening.header_block(raw) == expected


def test_received_count_stops_early() -> None:
    """Counting stops one past the limit, so a header full of Received costs no more."""
    assert screening.received_count(received(100) + b"\r\n", 3) == 4
    assert screening.received_count(received(2) + b"\r\n", 3) == 2


def test_ten_megabytes_take_milliseconds() -> None:
    """The whole screen of a 10 MB message stays far under a tenth of a second."""
    line = b"x" * 76 + b"\r\n"
    raw = received(3) + HEAD + b"\r\n" + line * (10 * 1024 * 1024 // len(line))
    limits = CaptureSettings()
    started = time.perf_counter()
    for _ in range(5):
        assert screening.screen(raw, limits) is None
    assert (time.perf_counter() - started) / 5 < 0.1
