"""A UIDVALIDITY change: the folder is read again, and nothing is recorded twice.

After a server restore or migration every UID of the folder means nothing (RFC 3501
§2.3.1.1); the messages are recognised by Message-ID, and the change is noted on the
account's error log as information.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import MailboxError, MailboxFolder, MailboxMessage
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.syncing import (
    activity_count,
    add_account,
    process_received,
    synced_messages,
    syncer,
)

USER = "richard.smith@mail.test.example"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox."""
    for server in running_dovecot():
        server.add_user(USER, "correct horse")
        yield server


def test_a_uidvalidity_change_records_no_message_twice(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Five messages, a new UIDVALIDITY, one more message: six activities, each once."""
    dovecot.append(USER, "INBOX", [make_email(subject=f"before {n}") for n in range(5)])
    account_id = add_account(sessions, settings, dovecot, USER)
    engine = syncer(sessions, blobs, settings, dovecot)
    assert engine.run(account_id).fetched == 5
    process_received(sessions, blobs, settings)

    new_validity = dovecot.change_uid_validity(USER, "INBOX")
    dovecot.append(USER, "INBOX", [make_email(subject="after")])
    result = engine.run(account_id)
    assert result.problem is None
    assert result.fetched == 1
    process_received(sessions, blobs, settings)

    assert activity_count(sessions) == 6
    assert len(synced_messages(sessions)) == 6
    with sessions() as session:
        folder = session.scalars(select(MailboxFolder).where(MailboxFolder.name == "INBOX")).one()
        assert folder.uidvalidity == new_validity
        rows = session.scalars(
            select(MailboxMessage).where(MailboxMessage.uidvalidity == new_validity)
        ).all()
        assert len(rows) == 6
        assert all(row.received_message_id is not None for row in rows)
        (note,) = session.scalars(select(MailboxError)).all()
    assert note.status == "info"
    assert "UIDVALIDITY" in note.what
    assert engine.run(account_id).fetched == 0
