"""The Message-ID intake records is read from the header section alone, within its bound."""

from __future__ import annotations

import random
import re

import pytest

from mailledger.mail.headerscan import body_start, header_end, message_id_in_head


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"From: a@x\r\nMessage-ID: <abc@x.example>\r\n\r\nbody", "abc@x.example"),
        (b"message-id:<abc@x.example>\r\n\r\n", "abc@x.example"),  # any case, no space
        (b"MESSAGE-ID :\r\n <folded@x.example>\r\n\r\n", "folded@x.example"),  # folded
        (b"Message-ID: <a@x> (a comment)\r\n\r\n", "a@x"),
        (b"Message-ID: bare@x.example\r\n\r\n", "bare@x.example"),  # no brackets
        (b"Message-ID: two words\r\n\r\n", ""),
        (b"Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\n", "first@x"),
        (b"Subject: hi\r\n\r\nMessage-ID: <in-body@x>\r\n", ""),  # the body is not read
        (b"\r\nMessage-ID: <after-blank@x>\r\n", ""),  # no header section at all
        (b"X-Message-ID: <not-it@x>\r\n\r\n", ""),
        (b"From: a@x\nMessage-ID: <lf-only@x>\n\nbody", "lf-only@x"),
        (b"Message-ID: <\xff\xfe@x>\r\n\r\n", "\ufffd\ufffd@x"),  # undecodable bytes kept visible
        (b"Subject: no id\r\n\r\n", ""),
        (b"", ""),
    ],
)
def test_message_id_in_head(head: bytes, expected: str) -> None:
    """The first Message-ID field of the header section, unfolded, without its brackets."""
    assert message_id_in_head(head) == expected


def test_the_scan_stops_at_its_limit() -> None:
    """A field past the limit is not read: the scan is bounded whatever the header's size."""
    head = b"X-Pad: " + b"a" * 5000 + b"\r\nMessage-ID: <late@x>\r\n\r\n"
    assert message_id_in_head(head, limit=4096) == ""
    assert message_id_in_head(head, limit=8192) == "late@x"


def test_an_overlong_id_is_not_taken() -> None:
    """More than 998 characters inside the brackets is no Message-ID (RFC 5322 §2.1.1)."""
    assert message_id_in_head(b"Message-ID: <" + b"a" * 999 + b"@x>\r\n\r\n") == ""


def test_header_end_is_where_the_old_pattern_matched() -> None:
    """The empty line is found where ``\\r?\\n\\r?\\n`` (the pattern used before) starts."""
    old = re.compile(rb"\r?\n\r?\n")
    rng = random.Random(5322)
    for _ in range(20000):
        window = bytes(rng.choice(b"\r\nab: ") for _ in range(rng.randint(0, 24)))
        match = old.search(window)
        assert header_end(window) == (match.start() if match else -1), window


def test_body_start_is_just_after_the_first_empty_line() -> None:
    """LF or CRLF line ends alike: the first ``\n\n`` or ``\n\r\n``, whichever ends first."""
    rng = random.Random(2045)
    for _ in range(20000):
        data = bytes(rng.choice(b"\r\nab: ") for _ in range(rng.randint(0, 24)))
        ends = [at + 2 for at in [data.find(b"\n\n")] if at >= 0]
        ends += [at + 3 for at in [data.find(b"\n\r\n")] if at >= 0]
        assert body_start(data) == min(ends, default=-1), data
