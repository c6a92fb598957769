"""A pass's FETCHes against a real Dovecot: read directly, the same as imapclient's ``fetch``.

The connection is made as a pass makes it (``imapconn.connect``), so imaplib's trace is off
as it is in a pass, and kept on when the imapclient.imaplib logger is at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from imapclient import IMAPClient

from mailledger.sync.credentials import Login
from mailledger.sync.fetchanswer import fetch, read_answer
from mailledger.sync.imapconn import IMAPLIB_LOGGER, Endpoint, close, connect
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email

USER = "richard.smith@mail.test.example"
PASSWORD = "correct horse"
META = [b"RFC822.SIZE", b"INTERNALDATE", b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
BODY = [b"BODY.PEEK[]"]
HEADER = [b"BODY.PEEK[HEADER]"]


ZONES = [UTC, timezone(timedelta(hours=-8)), timezone(timedelta(minutes=345))]
APPENDED_AT = [datetime(2026, 3, 1 + n, 9, 30, tzinfo=ZONES[n % len(ZONES)]) for n in range(5)]


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox, holding messages of several kinds and dates."""
    for server in running_dovecot():
        server.add_user(USER, PASSWORD)
        messages = [
            make_email(subject="plain", message_id="plain@client.example"),
            b"Subject: no id at all\r\n\r\nhello\r\n",
            b"Subject: empty body\r\nMessage-ID: <e@client.example>\r\n\r\n",
            make_email(subject="8-bit", message_id="8bit@client.example", body="Grüße ) {3}\r\n"),
            make_email(subject="big", message_id="big@client.example", body="x" * 200_000),
        ]
        for raw, when in zip(messages, APPENDED_AT, strict=True):
            server.append(USER, "INBOX", [raw], when=when)
        yield server


def _connect(dovecot: Dovecot) -> IMAPClient:
    endpoint = Endpoint(dovecot.host, dovecot.port, "none", allow_invalid_cert=False)
    return connect(endpoint, Login(USER, PASSWORD, None), timeout_seconds=30)


def _same(ours: dict[int, dict[bytes, Any]], theirs: dict[int, dict[bytes, Any]]) -> None:
    assert ours == theirs
    for uid, message in ours.items():
        date = message.get(b"INTERNALDATE")
        if date is not None:
            assert date.utcoffset() == theirs[uid][b"INTERNALDATE"].utcoffset()


def test_dovecots_answers_are_read_directly_and_equal_imapclients(dovecot: Dovecot) -> None:
    imap = _connect(dovecot)
    try:
        imap.select_folder("INBOX", readonly=True)
        uids = sorted(int(uid) for uid in imap.search("ALL"))
        assert len(uids) == 5
        for items in (META, BODY, HEADER):
            # Dovecot's answer is the usual shape: read without imapclient's parser.
            typ, data = imap._imap.uid(
                "FETCH", ",".join(map(str, uids)), b"(%s)" % b" ".join(items)
            )
            assert typ == "OK"
            assert read_answer(data, normalise_times=False) is not None
            _same(fetch(imap, uids, items), imap.fetch(uids, items))
        # Messages asked for but gone are missing, as from imapclient.
        assert set(fetch(imap, [*uids, 999], BODY)) == set(uids)
        assert fetch(imap, [998, 999], META) == {} == imap.fetch([998, 999], META)
        assert fetch(imap, [], META) == {}
        answer = fetch(imap, uids, META)
        assert answer[uids[1]][b"BODY[HEADER.FIELDS (MESSAGE-ID)]"] == b"\r\n"
        assert answer[uids[4]][b"RFC822.SIZE"] > 200_000
        # The moments given at APPEND (Dovecot's Maildir keeps the moment, not the zone).
        assert [answer[uid][b"INTERNALDATE"] for uid in uids] == APPENDED_AT
    finally:
        close(imap)


def test_an_unsolicited_flag_change_is_left_to_imapclient(dovecot: Dovecot) -> None:
    """Another client flags a message meanwhile: Dovecot says so inside the next FETCH answer."""
    imap = _connect(dovecot)
    try:
        imap.select_folder("INBOX", readonly=True)
        uids = sorted(int(uid) for uid in imap.search("ALL"))
        expected = imap.fetch(uids, BODY)
        with dovecot.session(USER) as other:
            other.select_folder("INBOX")
            other.add_flags([uids[2]], [b"\\Flagged"])
        answer = fetch(imap, uids, BODY)
        assert {uid: a[b"BODY[]"] for uid, a in answer.items()} == {
            uid: a[b"BODY[]"] for uid, a in expected.items()
        }
        assert b"\\Flagged" in answer[uids[2]][b"FLAGS"]
    finally:
        close(imap)


def test_a_fetch_the_server_refuses_raises_as_imapclients(dovecot: Dovecot) -> None:
    imap = _connect(dovecot)
    try:
        imap.select_folder("INBOX", readonly=True)
        with pytest.raises(IMAPClient.Error) as ours:
            fetch(imap, [1], [b"NO-SUCH-ITEM"])
        with pytest.raises(IMAPClient.Error) as theirs:
            imap.fetch([1], [b"NO-SUCH-ITEM"])
        assert type(ours.value) is type(theirs.value)
    finally:
        close(imap)


def test_imaplibs_trace_is_off_unless_its_logger_is_at_debug(dovecot: Dovecot) -> None:
    imap = _connect(dovecot)
    try:
        assert imap._imap.debug == 0
    finally:
        close(imap)
    logger = logging.getLogger(IMAPLIB_LOGGER)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        imap = _connect(dovecot)
        try:
            assert imap._imap.debug > 0
        finally:
            close(imap)
    finally:
        logger.setLevel(level)
