"""Durable intake's group commit, on SQLite and PostgreSQL: rows, routes, trace, isolation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.routing.routes import RecipientRouter
from mailledger.store.blobs import BlobStore
from mailledger.store.inbox import (
    Intake,
    IntakeError,
    Received,
    Route,
    SessionFacts,
    TraceLine,
    add_received,
)
from mailledger.store.models import MessageState, ReceivedMessage, RouteKind, Staff
from mailledger.store.queueids import new_queue_id
from mailledger.testing.intake import hold_first_write

pytestmark = [pytest.mark.usefixtures("engine"), pytest.mark.postgres]


def _routes(sessions: sessionmaker[Session], demo: DemoAddresses) -> tuple[Route, Route]:
    router = RecipientRouter(sessions)
    user, log = router.route(demo.user_capture), router.route(demo.log_capture)
    assert isinstance(user, Route)
    assert isinstance(log, Route)
    return user, log


async def _held_batch(
    intake: Intake,
    monkeypatch: pytest.MonkeyPatch,
    jobs: list[tuple[SessionFacts, list[Route], bytes]],
) -> list[str | BaseException]:
    """Store ``jobs`` while the writer is held on a first message, so they form one batch."""
    gate = hold_first_write(monkeypatch)
    first_facts, first_routes, _ = jobs[0]
    first = asyncio.create_task(intake.store(first_facts, first_routes, b"Subject: first\r\n\r\n"))
    await asyncio.sleep(0.1)
    rest = [asyncio.create_task(intake.store(*job)) for job in jobs]
    await asyncio.sleep(0.1)
    gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    return results[1:]


async def test_a_batch_is_stored_with_routes_trace_and_defaults(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every message of one group commit gets its row, its routes and its first trace entry."""
    user, log = _routes(sessions, demo)
    intake = Intake(sessions, blobs)
    intake.start()
    before = datetime.now(UTC)
    jobs = [
        (
            SessionFacts(
                f"127.0.0.1:{n}",
                "mail.client.example",
                "carol@client.example" if n % 2 else "",
                [user.rcpt, log.rcpt] if n % 2 else [user.rcpt],
                "TLSv1.3 TLS_AES_256_GCM_SHA384" if n == 3 else "",
                f"trace{n}",
            ),
            [user, log] if n % 2 else [user],
            b"Subject: %d\r\n\r\nbody\r\n" % n,
        )
        for n in range(6)
    ]
    try:
        queue_ids = await _held_batch(intake, monkeypatch, jobs)
    finally:
        await intake.close()
    assert all(isinstance(q, str) for q in queue_ids), queue_ids
    with sessions() as session:
        rows = {
            row.queue_id: row
            for row in session.scalars(
                select(ReceivedMessage).options(
                    selectinload(ReceivedMessage.routes), selectinload(ReceivedMessage.trace)
                )
            )
        }
    for n, (queue_id, (facts, routes, raw)) in enumerate(zip(queue_ids, jobs, strict=True)):
        row = rows[str(queue_id)]
        assert (row.trace_id, row.peer, row.helo, row.mail_from, row.tls) == (
            facts.trace_id,
            facts.peer,
            facts.helo,
            facts.mail_from,
            facts.tls,
        )
        assert row.rcpt_to == facts.rcpt_to
        assert row.size == len(raw)
        assert blobs.get(row.blob) == raw
        assert row.state is MessageState.RECEIVED
        assert (row.reason, row.message_id, row.attempts, row.auth) == ("", "", 0, {})
        assert row.claimed_by is None and row.finished_at is None and not row.force_record
        assert before - timedelta(seconds=1) <= row.received_at <= datetime.now(UTC)
        assert [(r.tenant_id, r.kind, r.staff_id, r.rcpt, r.outcome) for r in row.routes] == [
            (r.tenant_id, r.kind, r.staff_id, r.rcpt, "") for r in routes
        ]
        assert len(row.trace) == 1
        trace = row.trace[0]
        assert (trace.step, trace.decision) == ("intake", "stored")
        assert trace.detail.startswith(f"{len(routes)} route(s) ({routes[0].rcpt}")
        assert f"{len(raw)} bytes, peer {facts.peer}, helo {facts.helo}" in trace.detail
        assert trace.detail.endswith(f", trace {facts.trace_id}")
        assert (", tls " in trace.detail) == (n == 3)
        assert trace.at.tzinfo is not None


async def test_a_bad_row_fails_alone_on_either_database(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route no tenant has fails its own message; the rest of the batch is committed."""
    user, _ = _routes(sessions, demo)
    bad = Route(tenant_id=9999, kind=RouteKind.LOG, staff_id=None, rcpt="log@nowhere.example")
    intake = Intake(sessions, blobs)
    intake.start()
    jobs = [
        (
            SessionFacts(f"127.0.0.1:{n}", "h", "", [user.rcpt], "", f"t{n}"),
            [bad if n == 2 else user],
            b"Subject: %d\r\n\r\nx\r\n" % n,
        )
        for n in range(4)
    ]
    try:
        results = await _held_batch(intake, monkeypatch, jobs)
    finally:
        await intake.close()
    assert isinstance(results[2], IntakeError)
    stored = {r for i, r in enumerate(results) if i != 2}
    with sessions() as session:
        found = set(session.scalars(select(ReceivedMessage.queue_id)))
    assert stored <= found
    assert len(found) == 4  # three of the batch and the first message


def test_the_one_writer_adds_a_message_in_the_callers_transaction(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """add_received commits nothing itself: a rollback leaves no trace, a commit everything."""
    _, log = _routes(sessions, demo)
    with sessions() as session:
        staff_id = session.scalars(select(Staff.id)).one()
    raw = b"Subject: sent\r\n\r\nbody\r\n"
    facts = SessionFacts("127.0.0.1:587", "laptop", demo.staff_address, [log.rcpt], "", "t1")
    message = Received(
        queue_id=new_queue_id(),
        facts=facts,
        routes=[log],
        blob=blobs.put(raw),
        size=len(raw),
        first=TraceLine("submission", "accepted", "submitted by richard"),
        submitted_by_staff_id=staff_id,
    )
    with pytest.raises(LookupError), sessions.begin() as session:
        assert len(add_received(session, [message])) == 1
        raise LookupError("the caller's next step fails: its transaction rolls back")
    with sessions() as session:
        assert session.scalars(select(ReceivedMessage)).all() == []
    with sessions.begin() as session:
        (message_id,) = add_received(session, [message])
    with sessions() as session:
        row = session.get_one(
            ReceivedMessage,
            message_id,
            options=[selectinload(ReceivedMessage.routes), selectinload(ReceivedMessage.trace)],
        )
        assert (row.queue_id, row.state, row.attempts) == (
            message.queue_id,
            MessageState.RECEIVED,
            0,
        )
        assert (row.mail_from, row.rcpt_to, row.size) == (demo.staff_address, [log.rcpt], len(raw))
        assert row.submitted_by_staff_id == staff_id
        assert [(r.kind, r.rcpt) for r in row.routes] == [(RouteKind.LOG, log.rcpt)]
        assert [(t.step, t.decision, t.detail) for t in row.trace] == [
            ("submission", "accepted", "submitted by richard")
        ]
