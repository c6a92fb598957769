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
