"""FETCH answers read directly are what imapclient's parser makes of them; the rest is left to it.

The data are in the form imaplib hands over: a ``(line, literal)`` tuple per literal, then
the rest of the line. Whatever ``read_answer`` returns must equal imapclient's
``parse_fetch_response`` on the same data; for anything but the usual shape it returns None
(and ``fetch`` then uses imapclient's parser).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response

from mailledger.sync.fetchanswer import read_answer

DATE = b'"02-Dec-2026 16:40:08 +0100"'
META_KEY = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"


def _imapclient(data: list[Any], *, normalise_times: bool = False) -> dict[int, dict[bytes, Any]]:
    return dict(parse_fetch_response(data, normalise_times, True))


def _same_as_imapclient(data: list[Any], *, normalise_times: bool = False) -> None:
    """read_answer reads ``data`` and gets exactly imapclient's result, zones included."""
    ours = read_answer(data, normalise_times=normalise_times)
    theirs = _imapclient(data, normalise_times=normalise_times)
    assert ours is not None
    assert ours == theirs
    for uid, message in ours.items():
        ours_date, theirs_date = message.get(b"INTERNALDATE"), theirs[uid].get(b"INTERNALDATE")
        if isinstance(theirs_date, datetime):
            assert isinstance(ours_date, datetime)
            assert ours_date.utcoffset() == theirs_date.utcoffset()
            assert ours_date.tzname() == theirs_date.tzname()
        else:
            assert ours_date == theirs_date


def test_the_meta_and_body_answers_of_a_pass() -> None:
    meta = [
        (b"1 (UID 7 RFC822.SIZE 10626 INTERNALDATE " + DATE + b" " + META_KEY + b" {40}",
         b"Message-ID: <order-0@client.example>\r\n\r\n"),
        b")",
        (b"2 (UID 9 RFC822.SIZE 25 INTERNALDATE " + DATE + b" " + META_KEY + b" {2}", b"\r\n"),
        b")",
    ]  # fmt: skip
    _same_as_imapclient(meta)
    body = [(b"1 (UID 7 BODY[] {12}", b"Subject: x\r\n"), b")"]
    _same_as_imapclient(body)
    assert read_answer(body, normalise_times=False) == {
        7: {b"SEQ": 1, b"BODY[]": b"Subject: x\r\n"}
    }


def test_literal_bytes_that_look_like_syntax_are_kept_as_they_are() -> None:
    literal = b') {5}\r\n* 3 FETCH (UID 4 BODY[] {1}\r\n"\\\x00\xff'
    data = [(b"3 (UID 12 BODY[HEADER] {%d}" % len(literal), literal), b")"]
    _same_as_imapclient(data)


@pytest.mark.parametrize(
    "date",
    [
        b'"02-Dec-2026 16:40:08 +0000"',
        b'" 2-Dec-2026 06:04:08 -0800"',
        b'"29-Feb-2024 23:59:59 +0530"',
        b'"01-Jan-1970 00:00:00 +1400"',
        b'"31-Dec-9999 23:59:59 -1200"',
    ],
)
def test_dates_in_every_zone_are_read_as_imapclient_reads_them(date: bytes) -> None:
    data = [(b"1 (UID 3 INTERNALDATE " + date + b" BODY[] {1}", b"x"), b")"]
    _same_as_imapclient(data)


@pytest.mark.parametrize(
    "date",
    [
        b'"02-Dec-2026 16:40:08 -0000"',  # no zone known: imapclient makes it naive
        b'"31-Feb-2026 16:40:08 +0000"',  # no such day: imapclient says None
        b'"02-dec-2026 16:40:08 +0000"',
        b'"Wed, 02 Dec 2026 16:40:08 +0000"',
        b'"02-Dec-2026 16.40.08 +0000"',
        b'"nonsense"',
        b'""',
    ],
)
def test_unusual_dates_are_left_to_imapclients_date_parser(date: bytes) -> None:
    data = [(b"1 (UID 3 INTERNALDATE " + date + b" BODY[] {1}", b"x"), b")"]
    _same_as_imapclient(data)


def test_items_in_another_order() -> None:
    data = [
        (b"5 (INTERNALDATE " + DATE + b" RFC822.SIZE 3 UID 8 BODY[HEADER] {3}", b"a\r\n"),
        b")",
    ]
    _same_as_imapclient(data)


def test_times_made_local_are_left_to_imapclient() -> None:
    data = [(b"1 (UID 3 INTERNALDATE " + DATE + b" BODY[] {1}", b"x"), b")"]
    _same_as_imapclient(data, normalise_times=True)


@pytest.mark.parametrize(
    "data",
    [
        # An unsolicited flag change of another message, before and among the answers.
        [b"4 (FLAGS (\\Seen))", (b"1 (UID 3 BODY[] {1}", b"x"), b")"],
        [(b"1 (UID 3 BODY[] {1}", b"x"), b")", b"2 (UID 5 FLAGS (\\Seen))"],
        # Flags in the same answer, before or after the literal.
        [(b"1 (UID 3 FLAGS (\\Seen) BODY[] {1}", b"x"), b")"],
        [(b"1 (UID 3 BODY[] {1}", b"x"), b" FLAGS (\\Seen))"],
        # Two literals in one answer.
        [(b"1 (UID 3 BODY[HEADER] {1}", b"h"), (b" BODY[TEXT] {1}", b"t"), b")"],
        # A body as NIL or as a quoted string, no literal at all.
        [b"1 (UID 3 BODY[] NIL)"],
        [b'1 (UID 3 BODY[] "abc")'],
        # A quoted date with an escape in it.
        [(b'1 (UID 3 INTERNALDATE "02-Dec-2026 \\"16:40:08 +0000" BODY[] {1}', b"x"), b")"],
        # No UID (imapclient keys it by its sequence number), or one message twice.
        [(b"1 (BODY[] {1}", b"x"), b")"],
        [(b"1 (UID 3 BODY[HEADER] {1}", b"h"), b")", (b"1 (UID 3 BODY[TEXT] {1}", b"t"), b")"],
        # Names in lower case.
        [(b"1 (uid 3 BODY[] {1}", b"x"), b")"],
        [(b"1 (UID 3 body[header] {1}", b"x"), b")"],
        # Nothing at all (every message expunged meanwhile).
        [None],
    ],
)
def test_any_other_shape_is_left_to_imapclient(data: list[Any]) -> None:
    assert read_answer(data, normalise_times=False) is None
    parse_fetch_response(data, False, True)  # and imapclient can read it


def test_a_literal_of_another_size_than_announced_is_left_to_imapclient() -> None:
    """imapclient refuses it (ProtocolError, as a broken connection); so must the pass."""
    data = [(b"1 (UID 3 BODY[] {5}", b"abc"), b")"]
    assert read_answer(data, normalise_times=False) is None
    with pytest.raises(ProtocolError):
        parse_fetch_response(data, False, True)


def test_random_answers_of_the_usual_shape() -> None:
    """Items in any order, any numbers, zones and literal bytes: always imapclient's result."""
    rng = random.Random(20261202)
    items = [b"UID", b"RFC822.SIZE", b"INTERNALDATE"]
    sections = [b"BODY[]", b"BODY[HEADER]", META_KEY, b"BODY[1.MIME]"]
    for _ in range(300):
        data: list[Any] = []
        for seq in range(1, rng.randint(1, 6)):
            parts = []
            for name in rng.sample(items, 3):
                if name == b"INTERNALDATE":
                    moment = datetime.fromtimestamp(rng.randint(0, 2**33), UTC)
                    zone = rng.choice([b"+0000", b"-0800", b"+0545", b"+1400", b"-1130"])
                    text = moment.strftime("%d-%b-%Y %H:%M:%S ").encode() + zone
                    parts.append(b'INTERNALDATE "' + text + b'"')
                elif name == b"UID":
                    parts.append(b"UID %d" % (seq * 1000 + rng.randint(0, 999)))
                else:
                    parts.append(name + b" %d" % rng.randint(0, 10**9))
            literal = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 40)))
            section = rng.choice(sections)
            head = b"%d (" % seq + b" ".join(parts) + b" " + section + b" {%d}" % len(literal)
            data += [(head, literal), b")"]
        if data:
            _same_as_imapclient(data)
