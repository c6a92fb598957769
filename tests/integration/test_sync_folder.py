"""Folder mode against a real Dovecot: what the user drops in is recorded, then moved on.

The source and processed folders are created by the first pass; a message is moved only
after its received row is committed, and a crash between the commit and the move moves it
on the next pass without recording it again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, MailboxMessage, SyncMode
from mailledger.sync import foldermode
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.syncing import add_account, process_received, synced_messages, syncer

USER = "richard.smith@mail.test.example"


@pytest.fixture(params=["move", "copy-expunge"])
def dovecot(request: pytest.FixtureRequest) -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox, with MOVE offered, and without it."""
    for server in running_dovecot(move=request.param == "move"):
        server.add_user(USER, "correct horse")
        yield server


def test_folder_mode_records_what_is_dropped_in_and_moves_it(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Aspire's folders: created, imported, moved to Processed; INBOX is left alone."""
    dovecot.append(USER, "INBOX", [make_email(subject="stays in the inbox")])
    account_id = add_account(
        sessions,
        settings,
        dovecot,
        USER,
        mode=SyncMode.FOLDER,
        source_folder="Aspire",
        processed_folder="Aspire/Processed",
    )
    engine = syncer(sessions, blobs, settings, dovecot)
    assert engine.run(account_id).fetched == 0
    names = set(dovecot.folder_counts(USER))
    assert {"Aspire", "Aspire/Processed"} <= names

    dovecot.append(USER, "Aspire", [make_email(subject=f"log this {n}") for n in range(3)])
    result = engine.run(account_id)
    assert (result.fetched, result.moved) == (3, 3)
    counts = dovecot.folder_counts(USER)
    assert counts["Aspire"][0] == 0
    assert counts["Aspire/Processed"][0] == 3
    assert counts["INBOX"][0] == 1
    process_received(sessions, blobs, settings)
    with sessions() as session:
        subjects = sorted(session.scalars(select(Activity.subject)))
    assert subjects == ["log this 0", "log this 1", "log this 2"]


def test_a_crash_between_commit_and_move_moves_without_recording_again(  # noqa: PLR0917
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The committed message is only moved by the next pass: one received row, one activity."""
    account_id = add_account(sessions, settings, dovecot, USER, mode=SyncMode.FOLDER)
    engine = syncer(sessions, blobs, settings, dovecot)
    engine.run(account_id)
    dovecot.append(USER, "mailledger", [make_email(subject="once only")])

    def crash(*_args: object) -> None:
        raise ConnectionResetError("connection lost before the move")

    with monkeypatch.context() as patched:
        patched.setattr(foldermode, "move", crash)
        failed = engine.run(account_id)
    assert failed.problem is not None
    assert dovecot.folder_counts(USER)["mailledger"][0] == 1
    assert len(synced_messages(sessions)) == 1

    again = engine.run(account_id)
    assert again.problem is None
    assert (again.fetched, again.moved) == (0, 1)
    assert dovecot.folder_counts(USER)["mailledger"][0] == 0
    assert len(synced_messages(sessions)) == 1
    with sessions() as session:
        (row,) = session.scalars(select(MailboxMessage)).all()
        assert row.moved_at is not None
    process_received(sessions, blobs, settings)
    with sessions() as session:
        assert session.scalars(select(Activity.subject)).all() == ["once only"]
