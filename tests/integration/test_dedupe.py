"""One email, one activity, and never one activity for two emails (issue: dedupe).

A content checksum (From, To, Cc, Date, Subject, text) recognises an email that has no
Message-ID. Two present, different Message-IDs are two emails, however alike they are: the
same short reply sent twice within a second with different attachments is two activities. A
duplicate kept apart can be merged later; an email merged away is lost from the record.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import process_message
from mailledger.cli.demo import DemoAddresses
from mailledger.config import DNSSettings, Settings, VerifySettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, MessageState, ReceivedMessage
from mailledger.testing.mail import make_email, store_received
from mailledger.verify.authenticate import Authenticator

RICHARD = "richard@acme.capture.example"
LOG = "log@acme.capture.example"

Process = Callable[..., ReceivedMessage]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback trusted, as in the demo: these tests look at dedupe alone."""
    return settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})


@pytest.fixture
def process(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> Process:
    """Store raw bytes for the capture addresses, process them, return the message."""
    unreachable = DNSSettings(nameservers=["127.0.0.1:9"], timeout_seconds=0.2)
    authenticator = Authenticator(Resolver(unreachable), settings)

    def run(raw: bytes, rcpts: list[str], mail_from: str = "richard@acme.example"):
        message_id = store_received(sessions, blobs, raw, rcpts, mail_from=mail_from)
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, settings, authenticator)
        with sessions() as session:
            return session.get_one(ReceivedMessage, message_id)

    return run


def _activities(sessions: sessionmaker[Session]) -> list[Activity]:
    with sessions() as session:
        return list(session.scalars(select(Activity).order_by(Activity.id)))


def _reply(message_id: str, attachment: bytes) -> bytes:
    return make_email(
        sender="richard@acme.example",
        to="carol@client.example",
        subject="Re: quote",
        body="Here it is.\r\n",
        message_id=message_id,
        attachments=[("quote.pdf", "application/pdf", attachment)],
    )


def test_two_different_message_ids_are_two_activities_however_alike(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """The same short reply sent twice in a second, other attachment: two emails, two records."""
    first = _reply("reply-1@acme.example", b"%PDF-1.4 first")
    second = _reply("reply-2@acme.example", b"%PDF-1.4 other")
    # Same From, To, Date, Subject and text: only the Message-ID and the attachment differ.
    date = re.compile(rb"^Date: .*$", re.MULTILINE)
    second = date.sub(date.search(first).group(0), second)  # type: ignore[union-attr]
    for raw in (first, second):
        message = process(raw, [LOG])
        assert message.state is MessageState.PROCESSED, message.reason
    activities = _activities(sessions)
    assert [a.message_id for a in activities] == ["reply-1@acme.example", "reply-2@acme.example"]


def test_the_same_message_id_by_two_paths_is_still_one_activity(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """The Message-ID stays the key: Richard's BCC and his forward of one email merge."""
    raw = _reply("reply-3@acme.example", b"%PDF-1.4 x")
    process(raw, [LOG])
    process(b"Received: from elsewhere\r\n" + raw, [RICHARD])
    [activity] = _activities(sessions)
    assert activity.dedupe_key == "mid:reply-3@acme.example"


def test_a_missing_message_id_still_merges_on_the_checksum(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """Without a Message-ID, the content checksum recognises the same email by two paths."""
    raw = _reply("", b"%PDF-1.4 y")
    process(raw, [LOG])
    process(b"Received: from elsewhere\r\n" + raw, [RICHARD])
    [activity] = _activities(sessions)
    assert activity.dedupe_key.startswith("sum:")


def test_a_copy_without_message_id_joins_the_activity_that_has_one(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """The checksum stands in for a missing ID: a copy that lost it still merges."""
    raw = _reply("reply-4@acme.example", b"%PDF-1.4 z")
    process(raw, [LOG])
    stripped = re.sub(rb"^Message-ID: .*\r\n", b"", raw, flags=re.MULTILINE | re.IGNORECASE)
    assert stripped != raw
    process(stripped, [RICHARD])
    [activity] = _activities(sessions)
    assert activity.message_id == "reply-4@acme.example"


def test_a_copy_with_message_id_joins_the_activity_recorded_without_one(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """An activity recorded without an ID has no ID to disagree with: its checksum matches."""
    raw = _reply("reply-5@acme.example", b"%PDF-1.4 w")
    stripped = re.sub(rb"^Message-ID: .*\r\n", b"", raw, flags=re.MULTILINE | re.IGNORECASE)
    process(stripped, [RICHARD])
    process(raw, [LOG])
    assert len(_activities(sessions)) == 1
