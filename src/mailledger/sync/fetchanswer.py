"""UID FETCH for a pass: the answer's usual shape read directly, anything else by imapclient.

A pass asks for two things per batch: sizes, dates and Message-IDs, then bodies. A server
answers each message with one line and one literal, e.g.
``* 7 FETCH (UID 12 RFC822.SIZE 10626 INTERNALDATE "02-Dec-2026 16:40:08 +0000"
BODY[HEADER.FIELDS (MESSAGE-ID)] {40}`` + 40 bytes + ``)``. imapclient's parser is a general
IMAP lexer in pure Python: on such answers it cost more CPU than reading the bytes from the
socket. :func:`read_answer` reads exactly this shape (numbers and plain quoted strings, then
one literal, then ``)``) with one regular expression per message, and returns ``None`` for
an answer with anything else in it (an unsolicited FLAGS update, another order of items, a
NIL or quoted body, escapes in a string, a message seen twice); :func:`fetch` then hands the
whole answer to imapclient's parser. Either way the result is what imapclient's ``fetch``
returns.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import IMAPClientError
from imapclient.fixed_offset import FixedOffset
from imapclient.response_parser import parse_fetch_response

# "7 (UID 12 RFC822.SIZE 10626 INTERNALDATE "..." BODY[...] {40}": imaplib has taken off the
# "* " and "FETCH "; the literal follows as the second half of imaplib's tuple.
_HEAD = re.compile(
    rb"(\d+) \(((?:(?:UID|RFC822\.SIZE) \d+ |INTERNALDATE \"[^\"\\\r\n]*\" )*)"
    rb"(BODY\[[^\]\r\n]*\]) \{(\d+)\}"
)
_ITEM = re.compile(rb"(UID|RFC822\.SIZE) (\d+) |INTERNALDATE \"([^\"]*)\" ")
_INTERNALDATE = b"INTERNALDATE"
_END = b")"
# RFC 3501's date-time, "02-Dec-2026 16:40:08 +0100"; "-0000" (no zone known) is left to
# imapclient, which makes it a time without a zone.
_MONTH_NAMES = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_DATE_TIME = re.compile(
    rb"( ?\d|\d\d)-(" + b"|".join(_MONTH_NAMES) + rb")-(\d{4}) "
    rb"(\d\d):(\d\d):(\d\d) ([+-])(\d\d)([0-5]\d)"
)

# The zones seen, by offset in seconds: one tzinfo each, as imapclient's FixedOffset makes them.
_ZONES: dict[int, FixedOffset] = {}

Answer = dict[int, dict[bytes, Any]]


def fetch(imap: IMAPClient, uids: Sequence[int], items: Sequence[bytes]) -> Answer:
    """``imap.fetch(uids, items)`` (UID FETCH, keyed by UID), read by :func:`read_answer`.

    Messages the server did not answer for (expunged meanwhile) are missing, and answers
    for messages not asked for (unsolicited) are dropped, as imapclient's ``fetch`` does.
    """
    if not uids:
        return {}
    wanted = ",".join(str(uid) for uid in uids)
    what = b"(" + b" ".join(item.upper() for item in items) + b")"
    # imaplib's own UID command on imapclient's connection: it raises for BAD, and answers NO
    # as the type; the untagged FETCH data come back as imaplib read them.
    typ, data = imap._imap.uid("FETCH", wanted, what)
    if typ != "OK":
        raise IMAPClientError(f"fetch failed: {_words(data)}")
    parsed = read_answer(data, normalise_times=imap.normalise_times)
    if parsed is None:
        parsed = parse_fetch_response(data, imap.normalise_times, True)
    return {uid: parsed[uid] for uid in uids if uid in parsed}


def read_answer(data: Sequence[Any], *, normalise_times: bool) -> Answer | None:
    """imaplib's untagged FETCH data as imapclient parses it, or None if not the usual shape.

    The usual shape: for every message, a ``(head, literal)`` tuple then ``b")"``, the head
    being the message number and ``(``, then UID, RFC822.SIZE and INTERNALDATE items in
    any order, then one ``BODY[...]`` item whose value is the literal, of the size announced.
    """
    if len(data) % 2:
        return None
    answer: Answer = {}
    for index in range(0, len(data), 2):
        part, end = data[index], data[index + 1]
        if end != _END or type(part) is not tuple or len(part) != 2:
            return None
        head, literal = part
        if type(head) is not bytes or type(literal) is not bytes:
            return None
        match = _HEAD.fullmatch(head)
        if match is None or int(match[4]) != len(literal):
            return None  # imapclient's parser refuses a literal of another size
        seq = int(match[1])
        message: dict[bytes, Any] = {b"SEQ": seq}
        uid = seq
        has_uid = False
        for item in _ITEM.finditer(match[2]):
            name = item[1]
            if name is None:
                message[_INTERNALDATE] = _internaldate(item[3], normalise_times)
            elif name == b"UID":
                uid, has_uid = int(item[2]), True
            else:
                message[name] = int(item[2])
        if not has_uid or uid in answer:
            return None  # imapclient would key it by its sequence number, or merge two
        message[match[3].upper()] = literal
        answer[uid] = message
    return answer


def _internaldate(text: bytes, normalise: bool) -> datetime | None:
    """An INTERNALDATE as imapclient converts it (None when it cannot be read).

    The usual form is read here (imapclient's general date parser was most of the CPU of
    reading a batch's sizes and dates); anything else, or a time to be made local, by it.
    """
    match = None if normalise else _DATE_TIME.fullmatch(text)
    if match is not None and not (match[7] == b"-" and match[8] == match[9] == b"00"):
        sign = -1 if match[7] == b"-" else 1
        offset = sign * (int(match[8]) * 3600 + int(match[9]) * 60)
        zone = _ZONES.get(offset)
        if zone is None:
            zone = _ZONES.setdefault(offset, FixedOffset(offset / 60))
        with contextlib.suppress(ValueError):  # 31-Feb and the like: imapclient says None
            return datetime(
                int(match[3]),
                _MONTHS[match[2]],
                int(match[1]),
                int(match[4]),
                int(match[5]),
                int(match[6]),
                tzinfo=zone,
            )
    try:
        parsed: datetime = parse_to_datetime(text, normalise=normalise)
    except ValueError:
        return None
    return parsed


def _words(data: Sequence[Any]) -> str:
    first = data[0] if data else b""
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
