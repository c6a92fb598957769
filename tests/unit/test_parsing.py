"""The parser fed in slices builds exactly the message ``BytesParser.parsebytes`` builds."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesParser
from pathlib import Path
from typing import BinaryIO

import pytest

from mailledger.mail import parsing
from mailledger.testing.mail import make_email

MESSAGES = [
    make_email(),
    make_email(body="line\r\n" * 500, attachments=[("a.pdf", "application/pdf", b"%PDF" * 900)]),
    b"From: a@b.example\nSubject: bare LF\n\nbody\nmore\n",
    b"From: a@b.example\r\nSubject: mixed\r\n\nbody\r\r\nx\n\r\n",
    b"From: =?utf-8?q?J=C3=B6rg?= <j@b.example>\r\nSubject: caf\xc3\xa9\r\n\r\n\xff\xfe 8bit\r\n",
    b"no header block at all",
    b"",
]


@pytest.mark.parametrize("feed", [1, 2, 3, 7, 64, 8192, parsing.FEED_BYTES])
@pytest.mark.parametrize("raw", MESSAGES)
def test_slices_parse_as_parsebytes(raw: bytes, feed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "FEED_BYTES", feed)
    expected = BytesParser(policy=policy.compat32).parsebytes(raw)
    got = parsing._parse_bytes(raw)
    assert got.as_bytes() == expected.as_bytes()
    assert _leaves(got) == _leaves(expected)
    assert [type(d) for d in got.defects] == [type(d) for d in expected.defects]


def _leaves(message: Message) -> list[tuple[str, object]]:
    return [(p.get_content_type(), p.get_payload()) for p in message.walk() if not p.is_multipart()]


def test_random_crlf_soup(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    pieces = [b"\r", b"\n", b"\r\n", b"a", b": ", b"--x", b" ", b"Content-Type: multipart/mixed"]
    for _ in range(300):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))
        monkeypatch.setattr(parsing, "FEED_BYTES", rng.choice([1, 2, 5, 64]))
        expected = BytesParser(policy=policy.compat32).parsebytes(raw)
        assert parsing._parse_bytes(raw).as_bytes() == expected.as_bytes(), raw
        assert parsing._parse_bytes(io.BytesIO(raw)).as_bytes() == expected.as_bytes(), raw


_HEADER_LINES = [
    b"From: a@b.example",
    b"Subject: hi",
    b" folded",
    b"\tfolded too",
    b"Content-Type: text/plain",
    b"Content-Type: text/html; charset=utf-8",
    b"Content-Type: multipart/mixed; boundary=XX",
    b"Content-Type: message/rfc822",
    b"Content-Type: message/delivery-status",
    b"Content-Transfer-Encoding: base64",
    b"From someone@b.example",
    b"X-Empty:",
    b"X-8bit: caf\xc3\xa9",
    b"no colon here",
    b"\x0cX: form feed",
]
_BODY_LINES = [b"hello", b"", b"--XX", b"--XX--", b"a\rb", b"\xff", b"From: z", b"aGVsbG8="]


def test_a_body_without_parts_is_the_rest_of_the_bytes() -> None:
    """The header section alone through the parser, the rest as payload: the same message.

    Header sections that end early (a line that is no header, a bare CR), parts and nested
    messages fall back to the whole parse; every case must equal ``parsebytes``.
    """
    rng = random.Random(5)
    shortcut = 0
    for _ in range(3000):
        newline = rng.choice([b"\r\n", b"\n"])
        ends = [newline, newline, b"\r", b"\n", b"\r\n"]
        head = b"".join(
            rng.choice(_HEADER_LINES) + rng.choice(ends) for _ in range(rng.randrange(0, 7))
        )
        blank = rng.choice([newline, b"\n", b"\r\n", b"\r\r\n", b""])
        body = b"".join(
            rng.choice(_BODY_LINES) + rng.choice([*ends, b""]) for _ in range(rng.randrange(0, 6))
        )
        raw = head + blank + body
        expected = BytesParser(policy=policy.compat32).parsebytes(raw)
        shortcut += parsing._single_part(raw) is not None
        got = parsing._parse_bytes(raw)
        assert _generated(got) == _generated(expected), raw
        assert _leaves(got) == _leaves(expected), raw
        assert list(got.raw_items()) == list(expected.raw_items()), raw
        assert [type(d) for d in got.defects] == [type(d) for d in expected.defects], raw
    assert shortcut > 300  # the shortcut itself was compared, not only the whole parse
    assert parsing._single_part(make_email()) is not None


def _generated(message: Message) -> object:
    """The message written out again, or the error writing it (8-bit text in some headers)."""
    try:
        return message.as_bytes()
    except UnicodeError as exc:
        return type(exc)


def _facts_or_reason(source: bytes | BinaryIO) -> object:
    when = datetime(2026, 11, 22, tzinfo=UTC)
    try:
        return parsing.parse_message(source, received_at=when, max_depth=1, max_parts=3)
    except parsing.ParseFailure as exc:
        return str(exc)


@pytest.mark.parametrize("raw", [m for m in MESSAGES if m])
def test_a_file_parses_as_its_bytes(raw: bytes, tmp_path: Path) -> None:
    """Large messages are parsed from their file: the same facts, the same quarantine reasons."""
    path = tmp_path / "message"
    path.write_bytes(raw)
    with path.open("rb") as stream:
        assert _facts_or_reason(stream) == _facts_or_reason(raw)


def _parsed(raw: bytes) -> parsing.ParsedMessage:
    when = datetime(2026, 11, 22, tzinfo=UTC)
    return parsing.parse_message(raw, received_at=when, max_depth=5, max_parts=50)


def test_each_once_only_header_present_once_is_not_ambiguous() -> None:
    """Every header RFC 5322 §3.6 allows once, each present once: a sender, nothing repeated."""
    parsed = _parsed(
        make_email(
            cc="dave@client.example",
            headers={
                "Sender": "carol@client.example",
                "Reply-To": "carol@client.example",
                "Bcc": "richard@acme.example",
                "In-Reply-To": "<a@client.example>",
                "References": "<a@client.example>",
            },
        )
    )
    assert parsed.repeated == ()
    assert parsed.ambiguity == ""
    assert parsed.sender is not None
    assert parsed.sender.address == "carol@client.example"


def test_repeated_once_only_headers_are_counted_whatever_their_case() -> None:
    """Header names match without case; the count is per name, in RFC 5322 §3.6's order."""
    raw = (
        b"Subject: first\r\nFrom: a@b.example\r\nTO: x@y.example\r\nSubject: second\r\n"
        b"to: z@y.example\r\nCC: c@y.example\r\nTo: x@y.example\r\n\r\nbody\r\n"
    )
    parsed = _parsed(raw)
    assert parsed.repeated == (("To", 3), ("Subject", 2))
    assert parsed.ambiguity == "3 To headers, 2 Subject headers"
    assert parsed.sender is None


def test_headers_allowed_many_times_are_not_ambiguous() -> None:
    """Trace, Resent-* blocks, Comments and Keywords may repeat (RFC 5322 §3.6)."""
    raw = (
        b"Received: from a\r\nReceived: from b\r\nResent-To: r@y.example\r\n"
        b"Resent-To: q@y.example\r\nComments: one\r\nComments: two\r\nKeywords: k\r\n"
        b"Keywords: l\r\nDKIM-Signature: v=1\r\nDKIM-Signature: v=1\r\nFrom: a@b.example\r\n"
        b"\r\nbody\r\n"
    )
    parsed = _parsed(raw)
    assert parsed.repeated == ()
    assert parsed.sender is not None
