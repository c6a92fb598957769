"""Sweep mode against a real Dovecot: INBOX and Sent become activities, the mailbox untouched.

Mail goes through the real engine (``sync.passes``), the one intake writer, and the capture
worker's pipeline; the mailbox's flags and counts are compared before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    AccountStatus,
    Activity,
    Direction,
    MailboxAccount,
    MailboxFolder,
    MessageRoute,
    ReceivedMessage,
    RouteKind,
    utcnow,
)
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.syncing import (
    activity_count,
    add_account,
    process_received,
    sources_by_activity,
    submit_as_staff,
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


def _activities(sessions: sessionmaker[Session]) -> list[Activity]:
    with sessions() as session:
        return list(session.scalars(select(Activity).order_by(Activity.id)))


def test_sweep_records_inbox_and_sent_through_the_pipeline(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """A client's mail in INBOX is inbound, Richard's reply in Sent outbound, both recorded."""
    inbound = make_email(subject="Spring order", message_id="in-1@client.example")
    outbound = make_email(
        sender="Richard Smith <richard@acme.example>",
        to="Carol Client <carol@client.example>",
        subject="Re: Spring order",
        message_id="out-1@acme.example",
    )
    dovecot.append(USER, "INBOX", [inbound])
    dovecot.append(USER, "Sent", [outbound], flags=["\\Seen"])
    dovecot.append(USER, "Trash", [make_email(subject="thrown away")])
    dovecot.append(USER, "Junk", [make_email(subject="spam")])
    account_id = add_account(sessions, settings, dovecot, USER)

    result = syncer(sessions, blobs, settings, dovecot).run(account_id)
    assert result.problem is None, result.problem
    assert result.fetched == 2
    assert process_received(sessions, blobs, settings) == 2

    activities = _activities(sessions)
    assert [(a.subject, a.direction) for a in activities] == [
        ("Spring order", Direction.INBOUND),
        ("Re: Spring order", Direction.OUTBOUND),
    ]
    for activity in activities:
        assert activity.auth["trust"] == "mailbox"
        assert "fetched from the staff member's own mailbox" in activity.auth["trust_reason"]
    assert all(kinds == ["sync"] for kinds in sources_by_activity(sessions).values())
    with sessions() as session:
        account = session.get_one(MailboxAccount, account_id)
        assert account.status is AccountStatus.ENABLED
        assert account.messages_synced == 2
        roles = dict(session.execute(select(MailboxFolder.name, MailboxFolder.role)).all())
    assert roles == {"INBOX": "inbox", "Sent": "sent"}


@pytest.mark.postgres
def test_sweep_is_read_only_and_a_second_pass_fetches_nothing(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Flags and counts are exactly as before; the next pass skips the unchanged folders."""
    dovecot.append(USER, "INBOX", [make_email(subject=f"unread {n}") for n in range(3)])
    dovecot.append(USER, "INBOX", [make_email(subject="read")], flags=["\\Seen", "\\Flagged"])
    dovecot.append(
        USER, "Sent", [make_email(sender="richard@acme.example", to="carol@client.example")]
    )
    before_flags = {f: dovecot.flags(USER, f) for f in ("INBOX", "Sent")}
    before_counts = dovecot.folder_counts(USER)
    account_id = add_account(sessions, settings, dovecot, USER)
    engine = syncer(sessions, blobs, settings, dovecot)

    assert engine.run(account_id).fetched == 5
    assert {f: dovecot.flags(USER, f) for f in ("INBOX", "Sent")} == before_flags
    assert dovecot.folder_counts(USER) == before_counts
    assert engine.run(account_id).fetched == 0

    dovecot.append(USER, "INBOX", [make_email(subject="new one")])
    assert engine.run(account_id).fetched == 1
    assert len(synced_messages(sessions)) == 6


def test_sweep_takes_mail_from_the_since_moment_on(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Mail the server received before the account's window is left alone."""
    old = utcnow() - timedelta(days=40)
    dovecot.append(USER, "INBOX", [make_email(subject="old")], when=old)
    dovecot.append(USER, "INBOX", [make_email(subject="recent")])
    account_id = add_account(sessions, settings, dovecot, USER, since=utcnow() - timedelta(days=30))
    assert syncer(sessions, blobs, settings, dovecot).run(account_id).fetched == 1
    process_received(sessions, blobs, settings)
    assert [a.subject for a in _activities(sessions)] == ["recent"]


def test_a_forward_and_a_sync_of_one_email_are_one_activity_with_two_sources(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """The same Message-ID by forward (demo loopback trust) and by sync merges into one."""
    trusting = settings.model_copy(
        update={"verify": settings.verify.model_copy(update={"demo_trust_loopback": True})}
    )
    raw = make_email(subject="Both ways", message_id="both-ways@client.example")
    store_received(sessions, blobs, raw, [demo.user_capture])
    process_received(sessions, blobs, trusting)
    dovecot.append(USER, "INBOX", [raw])
    account_id = add_account(sessions, settings, dovecot, USER)
    assert syncer(sessions, blobs, settings, dovecot).run(account_id).fetched == 1
    process_received(sessions, blobs, settings)

    assert activity_count(sessions) == 1
    assert list(sources_by_activity(sessions).values()) == [["user", "sync"]]
    with sessions() as session:
        outcomes = session.scalars(
            select(MessageRoute.outcome).where(MessageRoute.kind == RouteKind.SYNC)
        ).all()
    assert outcomes == ["recorded"]


def test_the_original_senders_verdicts_come_from_the_providers_headers(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """The account's provider's Authentication-Results are recorded as the original verdict."""
    results = (
        b"Authentication-Results: mx.provider.example; spf=pass smtp.mailfrom=client.example;\r\n"
        b" dkim=pass header.d=client.example header.s=s1; dmarc=pass header.from=client.example\r\n"
    )
    raw = results + make_email(subject="Signed")
    dovecot.append(USER, "INBOX", [raw])
    account_id = add_account(sessions, settings, dovecot, USER, authserv_id="mx.provider.example")
    syncer(sessions, blobs, settings, dovecot).run(account_id)
    process_received(sessions, blobs, settings)
    (activity,) = _activities(sessions)
    assert activity.auth["dmarc"] == "pass"
    assert activity.auth["original"]["result"] == "pass"
    assert activity.auth["original"]["via"] == "dkim"
    with sessions() as session:
        (message,) = session.scalars(select(ReceivedMessage)).all()
        assert message.mailbox_account_id == account_id


def test_a_message_over_the_size_limit_is_recorded_from_its_headers(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Over max_message_bytes: headers only, with a note; the pass goes on."""
    small = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"max_message_bytes": 4096})}
    )
    big = make_email(
        subject="Drawings",
        message_id="big@client.example",
        attachments=[("plan.pdf", "application/pdf", b"%PDF" + b"x" * 20000)],
    )
    dovecot.append(USER, "INBOX", [big, make_email(subject="small")])
    account_id = add_account(sessions, small, dovecot, USER)
    assert syncer(sessions, blobs, small, dovecot).run(account_id).fetched == 2
    process_received(sessions, blobs, small)
    activities = {a.subject: a for a in _activities(sessions)}
    assert set(activities) == {"Drawings", "small"}
    drawings = activities["Drawings"]
    assert "only its header was recorded" in drawings.text_body
    assert drawings.message_id == "big@client.example"
    with sessions() as session:
        sizes = sorted(session.scalars(select(ReceivedMessage.size)).all())
    assert sizes[-1] < 4096


def test_mail_sent_through_the_relay_is_appended_to_sent_and_recognised(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """The relay's copy goes to Sent, \\Seen; the sweep reads it as the same one activity."""
    account_id = add_account(sessions, settings, dovecot, USER)
    engine = syncer(sessions, blobs, settings, dovecot)
    assert engine.run(account_id).problem is None  # the first look starts the cursor here
    raw = make_email(
        sender="Richard Smith <richard@acme.example>",
        to="Carol Client <carol@client.example>",
        subject="Your quote",
        message_id="quote-1@acme.example",
    )
    submitted = submit_as_staff(sessions, blobs, raw, demo)
    process_received(sessions, blobs, settings)
    with sessions() as session:
        assert session.get_one(ReceivedMessage, submitted).state.value == "processed"

    result = engine.run(account_id)
    assert result.problem is None
    assert result.fetched == 1
    flags = dovecot.flags(USER, "Sent")
    assert list(flags.values()) == [("\\Seen",)]
    process_received(sessions, blobs, settings)
    (activity,) = _activities(sessions)
    assert activity.direction is Direction.OUTBOUND
    assert list(sources_by_activity(sessions).values()) == [["log", "sync"]]
    assert engine.run(account_id).fetched == 0
    assert len(dovecot.flags(USER, "Sent")) == 1
