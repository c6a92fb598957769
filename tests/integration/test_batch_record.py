"""Recording a claimed batch in one transaction: one commit, dedupe inside the batch, and a
message that fails rolled back alone while the others are committed.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture import worker as worker_module
from mailledger.capture.pipeline.pending import TRACE, PendingRows
from mailledger.capture.processor import record_claimed
from mailledger.capture.worker import Worker
from mailledger.cli.demo import DemoAddresses
from mailledger.config import DNSSettings, Settings, VerifySettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store.blobs import BlobStore
from mailledger.store.lockwaits import lock_waits
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    MessageState,
    Participant,
    ReceivedMessage,
    TraceEntry,
    utcnow,
)
from mailledger.store.precompiled import Cursor
from mailledger.testing.mail import make_email, store_received
from mailledger.verify.authenticate import Authenticator

# The batch holds on both stores (DESIGN §9).
pytestmark = pytest.mark.postgres

RICHARD = "richard@acme.capture.example"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback trusted, as in the demo; mail from elsewhere is checked against DNS."""
    return settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})


@pytest.fixture
def worker(sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings) -> Worker:
    """A worker whose DNS never answers: a message checked against it waits for a retry.

    Its transactions may hold the database for a minute: each batch here is one of them.
    """
    unreachable = DNSSettings(nameservers=["127.0.0.1:9"], timeout_seconds=0.2)
    processing = settings.processing.model_copy(update={"transaction_hold_seconds": 60.0})
    settings = settings.model_copy(update={"processing": processing})
    return Worker(sessions, blobs, settings, Authenticator(Resolver(unreachable), settings))


def test_a_transaction_takes_no_message_past_its_hold_time(
    sessions: sessionmaker[Session],
    engine: Engine,
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
) -> None:
    """With a hold time nothing fits in, each message still gets a transaction of its own."""
    ids = [store_received(sessions, blobs, make_email(), [RICHARD]) for _ in range(3)]
    processing = settings.processing.model_copy(
        update={"transaction_hold_seconds": 1e-9, "transaction_max_seconds": 1e-9}
    )
    worker = Worker(sessions, blobs, settings.model_copy(update={"processing": processing}))
    assert sorted(worker.claim_batch()) == ids
    commits = _commits(engine)
    worker.process_batch(ids)
    assert len(commits) == 3
    with sessions() as session:
        states = session.scalars(select(ReceivedMessage.state).where(ReceivedMessage.id.in_(ids)))
        assert set(states) == {MessageState.PROCESSED}
        assert session.scalar(select(func.count()).select_from(Activity)) == 3


def _hold_briefly_unless_alone(settings: Settings) -> Settings:
    """Nothing fits in the hold time; a whole batch fits in the longest hold."""
    processing = settings.processing.model_copy(
        update={"transaction_hold_seconds": 1e-9, "transaction_max_seconds": 60.0}
    )
    return settings.model_copy(update={"processing": processing})


def test_with_no_server_writer_waiting_a_transaction_goes_on(
    sessions: sessionmaker[Session],
    engine: Engine,
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
) -> None:
    """On SQLite, past its hold time a transaction takes more messages while nobody waits."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's writers wait for rows, not for one lock")
    ids = [store_received(sessions, blobs, make_email(), [RICHARD]) for _ in range(3)]
    worker = Worker(sessions, blobs, _hold_briefly_unless_alone(settings))
    assert sorted(worker.claim_batch()) == ids
    commits = _commits(engine)
    worker.process_batch(ids)
    assert len(commits) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 3


@pytest.mark.usefixtures("demo")
def test_a_waiting_server_writer_ends_the_transaction_after_its_hold(
    sessions: sessionmaker[Session],
    engine: Engine,
    blobs: BlobStore,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Intake tried for the lock while a message was recorded: the transaction commits after
    it, and the next message gets a transaction of its own (on PostgreSQL, always so)."""
    ids = [store_received(sessions, blobs, make_email(), [RICHARD]) for _ in range(3)]
    waits = lock_waits(settings.database.url)

    def recorded_while_intake_waits(*args: Any, **kwargs: Any) -> None:
        record_claimed(*args, **kwargs)
        if waits is not None:
            waits.note()  # what intake's engine does at each try that finds the lock taken

    monkeypatch.setattr(worker_module, "record_claimed", recorded_while_intake_waits)
    worker = Worker(sessions, blobs, _hold_briefly_unless_alone(settings))
    assert sorted(worker.claim_batch()) == ids
    commits = _commits(engine)
    worker.process_batch(ids)
    assert len(commits) == 3
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 3


def _commits(engine: Engine) -> list[int]:
    """Counts every commit on ``engine`` from now on."""
    seen: list[int] = []

    def count(_connection: Any) -> None:
        seen.append(1)

    event.listen(engine, "commit", count)
    return seen


def _trace(sessions: sessionmaker[Session], message_id: int) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.execute(
            select(TraceEntry.step, TraceEntry.decision)
            .where(TraceEntry.message_id == message_id)
            .order_by(TraceEntry.id)
        )
        return [(step, decision) for step, decision in rows]


def test_a_batch_is_one_commit_and_two_copies_in_it_are_one_activity(
    sessions: sessionmaker[Session],
    engine: Engine,
    blobs: BlobStore,
    worker: Worker,
    demo: DemoAddresses,
) -> None:
    """Three messages, two copies of one email among them: one commit, two activities."""
    quote = make_email(subject="Quote", message_id="quote@client.example")
    ids = [
        store_received(sessions, blobs, quote, [RICHARD]),
        store_received(sessions, blobs, make_email(subject="Order"), [RICHARD]),
        store_received(sessions, blobs, quote, [RICHARD]),
    ]
    assert sorted(worker.claim_batch()) == ids
    commits = _commits(engine)
    worker.process_batch(ids)
    assert len(commits) == 1
    with sessions() as session:
        states = session.scalars(select(ReceivedMessage.state).where(ReceivedMessage.id.in_(ids)))
        assert set(states) == {MessageState.PROCESSED}
        activities = session.scalars(select(Activity).order_by(Activity.id)).all()
        assert [a.subject for a in activities] == ["Quote", "Order"]
        sources = session.execute(
            select(ActivitySource.activity_id, ActivitySource.message_id).order_by(
                ActivitySource.id
            )
        ).all()
        quote_id, order_id = activities[0].id, activities[1].id
        assert sources == [(quote_id, ids[0]), (order_id, ids[1]), (quote_id, ids[2])]
        # The second copy names the same parties: each is kept once.
        roles = session.execute(
            select(Participant.role, Participant.address).where(Participant.activity_id == quote_id)
        ).all()
        assert len(roles) == len(set(roles)) == 2
    assert ("record", "merged") in _trace(sessions, ids[2])


def test_a_message_that_must_wait_is_rolled_back_alone(
    sessions: sessionmaker[Session], blobs: BlobStore, worker: Worker, demo: DemoAddresses
) -> None:
    """A copy whose forwarder cannot be checked now (DNS) waits; the batch around it is kept."""
    quote = make_email(subject="Quote", message_id="quote@client.example")
    first = store_received(sessions, blobs, quote, [RICHARD])
    waiting = store_received(sessions, blobs, make_email(subject="Checked later"), [RICHARD])
    second = store_received(sessions, blobs, quote, [RICHARD])
    with sessions.begin() as session:
        # Not loopback: its forwarder is checked against DNS, which does not answer.
        session.get_one(ReceivedMessage, waiting).peer = "192.0.2.7:40000"
    ids = worker.claim_batch()
    worker.process_batch(ids)
    with sessions() as session:
        rows = {m.id: m for m in session.scalars(select(ReceivedMessage))}
        assert rows[first].state is MessageState.PROCESSED
        assert rows[second].state is MessageState.PROCESSED
        held = rows[waiting]
        assert held.state is MessageState.RECEIVED
        assert held.claimed_by is None
        assert held.claim_expires_at is not None
        assert held.claim_expires_at > utcnow()
        assert session.scalar(select(func.count()).select_from(Activity)) == 1
        assert session.scalar(select(func.count()).select_from(ActivitySource)) == 2
    # Nothing of the rolled-back attempt is left: only intake's line and the deferral.
    assert _trace(sessions, waiting) == [("intake", "stored"), ("worker", "deferred")]
    assert ("record", "merged") in _trace(sessions, second)


class _RollBackError(Exception):
    """Raised inside a savepoint to roll it back."""


def test_rows_written_inside_a_rolled_back_savepoint_are_written_again(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """An earlier message's rows, written while a later one ran, survive that one's rollback."""
    earlier = store_received(sessions, blobs, make_email(), [RICHARD])
    later = store_received(sessions, blobs, make_email(), [RICHARD])
    with sessions.begin() as session, Cursor.of(session) as sql:
        rows = PendingRows(sql)
        rows.begin()
        rows.add(TRACE, [{"message_id": earlier, "step": "test", "decision": "kept"}])
        rows.begin()
        with pytest.raises(_RollBackError), sql.savepoint():
            rows.add(TRACE, [{"message_id": later, "step": "test", "decision": "dropped"}])
            rows.write()  # as a merge does before reading participants
            raise _RollBackError
        rows.discard()
        rows.write()
    assert ("test", "kept") in _trace(sessions, earlier)
    assert [t for t in _trace(sessions, later) if t[0] == "test"] == []


def test_a_message_past_its_attempts_fails_in_the_batch_and_the_others_are_recorded(
    sessions: sessionmaker[Session], blobs: BlobStore, worker: Worker, demo: DemoAddresses
) -> None:
    """One claimed too often ends failed with its trace line; the batch around it records."""
    tired = store_received(sessions, blobs, make_email(subject="Tired"), [RICHARD])
    fresh = store_received(sessions, blobs, make_email(subject="Fresh"), [RICHARD])
    ids = worker.claim_batch()
    with sessions.begin() as session:
        session.get_one(ReceivedMessage, tired).attempts = 1000
    worker.process_batch(ids)
    with sessions() as session:
        failed = session.get_one(ReceivedMessage, tired)
        assert failed.state is MessageState.FAILED
        assert failed.reason == "too many processing attempts"
        assert failed.claimed_by is None
        assert session.get_one(ReceivedMessage, fresh).state is MessageState.PROCESSED
        assert session.scalars(select(Activity.subject)).all() == ["Fresh"]
    assert _trace(sessions, tired)[-1] == ("worker", "failed")


@pytest.mark.usefixtures("demo")
def test_attachments_are_stored_before_the_recording_transaction(
    sessions: sessionmaker[Session],
    engine: Engine,
    blobs: BlobStore,
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No blob is written while the transaction holds the database (on SQLite, intake's
    commit waits for it): the attachment is stored with the stamped copy, beforehand."""
    pdf = b"%PDF-1.4 quote " + bytes(range(256)) * 8
    raw = make_email(subject="Quote", attachments=[("quote.pdf", "application/pdf", pdf)])
    message_id = store_received(sessions, blobs, raw, [RICHARD])
    assert worker.claim_batch() == [message_id]
    events: list[str] = []
    real_put_many = blobs.put_many

    def put_many(items: Any) -> Any:
        events.append(f"put {len(items)}")
        return real_put_many(items)

    monkeypatch.setattr(blobs, "put_many", put_many)
    event.listen(engine, "begin", lambda _connection: events.append("begin"))
    event.listen(engine, "commit", lambda _connection: events.append("commit"))
    worker.process_batch([message_id])
    # The last transaction records (the first only read the claimed messages' facts).
    recording = len(events) - 1 - events[::-1].index("begin")
    assert events[recording:] == ["begin", "commit"]
    assert "put 1" in events[:recording]  # the PDF (loopback mail gets no stamped copy)
    with sessions() as session:
        (attachment,) = session.scalars(select(Attachment)).all()
        assert attachment.filename == "quote.pdf"
        assert blobs.get(attachment.blob) == pdf
