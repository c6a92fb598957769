"""The store on SQLite and PostgreSQL alike: models round-trip, directory rules hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.store import directory, leases, quarantine, queries
from mailledger.store.blobs import BlobStore
from mailledger.store.directory import DirectoryError
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    ContactAddress,
    Direction,
    MessageRoute,
    MessageState,
    NeverLog,
    Participant,
    PartyKind,
    ReceivedMessage,
    RouteKind,
    Staff,
    StaffAddress,
    TraceEntry,
    utcnow,
)
from mailledger.store.precompiled import Cursor

pytestmark = pytest.mark.postgres


def _message(
    session: Session,
    blobs: BlobStore,
    *,
    raw: bytes = b"Subject: hi\r\n\r\nhi\r\n",
    state: MessageState = MessageState.RECEIVED,
    queue_id: str = "Q1",
) -> ReceivedMessage:
    tenant = directory.find_tenant(session, "acme")
    staff = directory.find_staff(session, tenant, "richard")
    message = ReceivedMessage(
        queue_id=queue_id,
        trace_id="T" + queue_id,
        blob=blobs.put(raw),
        size=len(raw),
        peer="127.0.0.1:40000",
        helo="client.example",
        mail_from="carol@client.example",
        rcpt_to=["richard@acme.capture.example"],
        state=state,
        reason="unknown-sender" if state == MessageState.QUARANTINED else "",
        message_id="<m1@client.example>",
        auth={"spf": "pass"},
    )
    message.routes.append(
        MessageRoute(
            tenant_id=tenant.id,
            kind=RouteKind.USER,
            staff_id=staff.id,
            rcpt="richard@acme.capture.example",
            outcome="unknown-sender" if state == MessageState.QUARANTINED else "",
        )
    )
    message.trace.append(TraceEntry(step="parse", decision="ok", detail="1 part"))
    session.add(message)
    session.flush()
    return message


def test_models_round_trip(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Every kind of row comes back as written: UTC-aware times, JSON, enums, relationships."""
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    with sessions.begin() as session:
        message = _message(session, blobs)
        route = message.routes[0]
        activity = Activity(
            tenant_id=route.tenant_id,
            dedupe_key="mid:<m1@client.example>",
            direction=Direction.INBOUND,
            staff_id=route.staff_id,
            subject="Quote ünïcode",
            from_address="carol@client.example",
            message_id="<m1@client.example>",
            occurred_at=when,
            auth={"dmarc": "pass", "trust": {"decision": "forwarder authenticated"}},
        )
        activity.participants.append(
            Participant(role="from", address="carol@client.example", kind=PartyKind.CONTACT)
        )
        activity.participants.append(
            Participant(role="to", address="richard@acme.example", kind=PartyKind.STAFF)
        )
        activity.attachments.append(
            Attachment(filename="q.pdf", content_type="application/pdf", size=3, blob="a" * 64)
        )
        session.add(activity)
        session.flush()
        activity.sources.append(
            ActivitySource(message_id=message.id, route_id=route.id, kind=RouteKind.USER)
        )
        route.activity_id = activity.id
        message_id, activity_id = message.id, activity.id

    with sessions() as session:
        loaded = session.get(ReceivedMessage, message_id)
        assert loaded is not None
        assert loaded.rcpt_to == ["richard@acme.capture.example"]
        assert loaded.auth == {"spf": "pass"}
        assert loaded.state is MessageState.RECEIVED
        assert loaded.received_at.tzinfo is not None
        assert abs(loaded.received_at - datetime.now(UTC)) < timedelta(minutes=5)
        assert [(t.step, t.decision) for t in loaded.trace] == [("parse", "ok")]
        assert loaded.routes[0].activity_id == activity_id
        act = session.get(Activity, activity_id)
        assert act is not None
        assert act.occurred_at == when
        assert act.subject == "Quote ünïcode"
        assert act.auth["trust"] == {"decision": "forwarder authenticated"}
        assert [p.kind for p in act.participants] == [PartyKind.CONTACT, PartyKind.STAFF]
        assert act.sources[0].message_id == message_id
        assert act.attachments[0].filename == "q.pdf"
        listed = queries.activities(session)
        assert listed[0]["contacts"] == ["carol@client.example"]
        assert listed[0]["staff"] == "richard"
        assert listed[0]["sources"][0]["queue_id"] == "Q1"


def test_naive_datetime_refused(sessions: sessionmaker[Session], demo: DemoAddresses) -> None:
    """A naive timestamp is a bug, refused at the boundary rather than stored ambiguously."""
    with pytest.raises(Exception, match="naive datetime"), sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        session.add(
            Activity(
                tenant_id=tenant.id,
                dedupe_key="k",
                direction=Direction.INBOUND,
                occurred_at=datetime(2024, 1, 1),
            )
        )
        session.flush()


def test_staff_address_belongs_to_one_tenant(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """Another tenant cannot claim a staff address that acme's richard owns."""
    with sessions.begin() as session:
        other = directory.add_tenant(session, "globex", "globex.capture.example")
        with pytest.raises(DirectoryError, match="already belongs"):
            directory.add_staff(session, other, "rich", ["Richard@ACME.example"])
    with sessions() as session:
        assert session.scalars(select(Staff).where(Staff.username == "rich")).first() is None


def test_staff_address_unique_in_the_database(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """The rule holds in the schema too, for any writer that bypasses the directory module."""
    with pytest.raises(IntegrityError), sessions.begin() as session:
        other = directory.add_tenant(session, "globex", "globex.capture.example")
        staff = directory.add_staff(session, other, "rich", ["rich@globex.example"])
        session.add(
            StaffAddress(staff_id=staff.id, tenant_id=other.id, address="richard@acme.example")
        )
        session.flush()


def test_contact_address_unique_per_tenant(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """A contact address is one contact's within a tenant, and free in other tenants."""
    with sessions.begin() as session:
        acme = directory.find_tenant(session, "acme")
        with pytest.raises(DirectoryError, match="already a contact"):
            directory.add_contact(session, acme, ["Carol@Client.Example"])
        other = directory.add_tenant(session, "globex", "globex.capture.example")
        directory.add_contact(session, other, ["carol@client.example"], name="Carol")
    with sessions() as session:
        rows = session.scalars(
            select(ContactAddress).where(ContactAddress.address == "carol@client.example")
        ).all()
        assert len(rows) == 2


@pytest.mark.parametrize("username", ["log", "postmaster", "abuse", "mailer-daemon", "LOG"])
def test_reserved_usernames(
    sessions: sessionmaker[Session], demo: DemoAddresses, username: str
) -> None:
    """Role addresses and our log address never become a staff member's capture address."""
    with sessions.begin() as session:
        acme = directory.find_tenant(session, "acme")
        with pytest.raises(DirectoryError, match="reserved"):
            directory.add_staff(session, acme, username, ["x@acme.example"])


def test_duplicate_tenant_and_capture_domain(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """Tenant names and capture domains are unique."""
    with sessions.begin() as session:
        with pytest.raises(DirectoryError, match="already exists"):
            directory.add_tenant(session, "ACME", "other.capture.example")
        with pytest.raises(DirectoryError, match="already used"):
            directory.add_tenant(session, "other", "ACME.capture.example")


def test_never_log(sessions: sessionmaker[Session], demo: DemoAddresses) -> None:
    """Never-log patterns are normalized addresses or domains, per tenant or per staff member."""
    with sessions.begin() as session:
        acme = directory.find_tenant(session, "acme")
        richard = directory.find_staff(session, acme, "richard")
        directory.add_never_log(session, acme, "@Secret.Example")
        directory.add_never_log(session, acme, "secret.example", staff=richard)
        directory.add_never_log(session, acme, "Boss@Client.Example")
        with pytest.raises(DirectoryError, match="already"):
            directory.add_never_log(session, acme, "secret.example")
    with sessions() as session:
        rows = {(r.staff_id is None, r.pattern) for r in session.scalars(select(NeverLog))}
        assert rows == {
            (True, "secret.example"),
            (False, "secret.example"),
            (True, "boss@client.example"),
        }


def test_import_contacts_keeps_good_rows(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """A bad row is reported with its line and rolled back alone; the others are imported."""
    lines = [
        "Email,Name,Company\n",
        "dana@client.example;dana.b@client.example,Dana,Client Co\n",
        "not-an-address,Bad,\n",
        "carol@client.example,Carol again,\n",
        "erin@new.example,Erin,New Co\n",
        "erin@new.example,Erin twice,\n",
    ]
    report = directory.import_contacts(sessions, "acme", lines, batch_rows=2)
    assert report.imported == 2
    assert [line for line, _ in report.errors] == [3, 4, 6]
    with sessions() as session:
        acme = directory.find_tenant(session, "acme")
        rows = {c["name"]: c for c in queries.contacts(session, acme)}
        assert rows["Dana"]["addresses"] == ["dana@client.example", "dana.b@client.example"]
        assert rows["Dana"]["company"] == "Client Co"
        assert rows["Erin"]["company"] == "New Co"
        assert "Bad" not in rows


def test_import_contacts_needs_the_email_column(
    sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """A file without the expected header is refused as a whole."""
    with pytest.raises(DirectoryError, match="email"):
        directory.import_contacts(sessions, "acme", ["name,company\n", "x,y\n"])


def test_quarantine_release(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Release puts the message back to received, unclaimed, with a trace of who did it."""
    with sessions.begin() as session:
        message = _message(session, blobs, state=MessageState.QUARANTINED)
        message.claimed_by = "node-a"
        message.attempts = 2
        message_id = message.id
    with sessions.begin() as session:
        quarantine.release(session, message_id, force=True)
    with sessions() as session:
        loaded = session.get(ReceivedMessage, message_id)
        assert loaded is not None
        assert loaded.state is MessageState.RECEIVED
        assert loaded.claimed_by is None and loaded.claim_expires_at is None
        assert loaded.force_record is True
        assert loaded.routes[0].outcome == ""
        assert (loaded.trace[-1].step, loaded.trace[-1].decision) == (
            "operator",
            "released-forced",
        )
        assert "unknown-sender" in loaded.trace[-1].detail
    with sessions.begin() as session, pytest.raises(quarantine.QuarantineError):
        quarantine.release(session, message_id)


def test_quarantine_delete_keeps_shared_blobs(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Delete removes the row, its routes and trace, and the blob only when nothing shares it."""
    with sessions.begin() as session:
        first = _message(session, blobs, state=MessageState.QUARANTINED, queue_id="Q1")
        second = _message(session, blobs, state=MessageState.QUARANTINED, queue_id="Q2")
        ids, digest = (first.id, second.id), first.blob
    assert second.blob == digest
    with sessions.begin() as session:
        assert quarantine.delete(session, blobs, ids[0]) is False
    assert blobs.path(digest).exists()
    with sessions.begin() as session:
        assert quarantine.delete(session, blobs, ids[1]) is True
    assert not blobs.path(digest).exists()
    with sessions() as session:
        assert session.scalars(select(ReceivedMessage)).all() == []
        assert session.scalars(select(MessageRoute)).all() == []
        assert session.scalars(select(TraceEntry)).all() == []


def test_quarantine_delete_refuses_other_states(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """Only quarantined mail can be deleted: received mail is still to be processed."""
    with sessions.begin() as session:
        message_id = _message(session, blobs).id
    with sessions.begin() as session, pytest.raises(quarantine.QuarantineError, match="received"):
        quarantine.delete(session, blobs, message_id)


def test_leases_claim_once_renew_and_hand_back_with_or_without_the_attempt(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """A claim counts an attempt and keeps others off; only the owner renews or releases."""
    queue = leases.PROCESSING
    with sessions.begin() as session:
        message_id = _message(session, blobs).id
    (lease,) = leases.claim_waiting(sessions, queue, owner="a", lease_seconds=60, limit=5)
    assert (lease.id, lease.attempts) == (message_id, 1)
    assert leases.claim_waiting(sessions, queue, owner="b", lease_seconds=60, limit=5) == []
    with sessions.begin() as session:
        assert leases.renew(session, queue, [message_id], owner="b", lease_seconds=60) == 0
        assert leases.renew(session, queue, [message_id], owner="a", lease_seconds=60) == 1
        assert leases.release(session, queue, owner="b") == 0
        # Handed back unstarted: claimable at once, and its attempt no longer counts.
        assert leases.release(session, queue, owner="a", refund_attempt=True) == 1
    with sessions.begin() as session:
        (again,) = leases.claim(session, queue, owner="b", lease_seconds=60, limit=5)
    assert again.attempts == 1
    later = utcnow() + timedelta(hours=1)
    with sessions.begin() as session:
        # Handed back with a back-off: nobody claims it before then, and the attempt stays.
        assert leases.release(session, queue, [message_id], owner="b", not_before=later) == 1
    assert not leases.any_waiting(sessions, queue)
    assert leases.any_waiting(sessions, queue, later + timedelta(seconds=1))
    with sessions.begin() as session:
        message = session.get_one(ReceivedMessage, message_id)
        assert (message.attempts, message.claimed_by) == (1, None)
        message.state = MessageState.PROCESSED
    # A finished row is not claimed again, whenever asked.
    assert not leases.any_waiting(sessions, queue, later + timedelta(seconds=1))


def test_claiming_reads_the_oldest_waiting_in_index_order(engine: Engine) -> None:
    """SQLite walks (state, id) for a claim: it does not sort the whole backlog each time
    (a 20,000-message backfill sorted 20,000 rows per batch of 32, holding the write lock)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's query plan")
    query = (
        leases.PROCESSING.claimable(datetime.now(UTC)).order_by(*leases.PROCESSING.order).limit(32)
    )
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as connection:
        plan = " ".join(
            str(row[-1]) for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        )
    assert "ix_received_messages_state_id" in plan
    assert "TEMP B-TREE" not in plan


def test_a_claim_on_the_cursor_takes_what_claim_takes(
    sessions: sessionmaker[Session], blobs: BlobStore, demo: DemoAddresses
) -> None:
    """``claim_on`` (processing's claim-ahead) follows ``claim``'s rule: the oldest waiting
    unclaimed or lapsed rows, up to the limit, each with the owner, the lease and an attempt."""
    queue = leases.PROCESSING
    with sessions.begin() as session:
        ids = [
            _message(session, blobs, queue_id=f"Q{n}", raw=b"Subject: %d\r\n\r\nhi\r\n" % n).id
            for n in range(6)
        ]
        done = session.get_one(ReceivedMessage, ids[0])
        done.state = MessageState.PROCESSED
        held = session.get_one(ReceivedMessage, ids[1])
        held.claimed_by, held.claim_expires_at = "other", utcnow() + timedelta(hours=1)
        lapsed = session.get_one(ReceivedMessage, ids[2])
        lapsed.claimed_by, lapsed.claim_expires_at = "dead", utcnow() - timedelta(seconds=1)
        lapsed.attempts = 2
    now = utcnow()
    with sessions.begin() as session, Cursor.of(session) as sql:
        taken = leases.claim_on(sql, queue, owner="a", lease_seconds=60, limit=3, now=now)
    assert taken == ids[2:5]
    with sessions() as session:
        rows = {
            m.id: (m.claimed_by, m.claim_expires_at, m.attempts)
            for m in session.scalars(select(ReceivedMessage))
        }
    expires = now + timedelta(seconds=60)
    assert rows[ids[2]] == ("a", expires, 3)
    assert rows[ids[3]] == rows[ids[4]] == ("a", expires, 1)
    assert rows[ids[1]][0] == "other"
    assert rows[ids[5]] == (None, None, 0)
    with sessions.begin() as session:
        (last,) = leases.claim(session, queue, owner="b", lease_seconds=60, limit=5)
    assert last.id == ids[5]
