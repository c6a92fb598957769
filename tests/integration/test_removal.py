"""`staff remove` and `contact remove`, both ways, counted in rows and stored blobs.

Run through the real CLI against a real database (SQLite and PostgreSQL): a world of two staff
members, a contact, four received messages and three activities, one of them shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.main import main
from mailledger.routing.routes import RecipientRouter, Refusal
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.inbox import Route
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Contact,
    ContactAddress,
    Direction,
    ForwardingCheck,
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
)
from mailledger.testing.cli import InProcessCli

CAPTURE = "acme.capture.example"


@dataclass
class World:
    """Ids and digests of what the test built, to check what stayed and what went."""

    only_richard: int  # activity brought in by Richard alone
    shared: int  # activity Richard's and Jane's forwards both brought in
    only_jane: int
    richard_message: int
    shared_message: int
    quarantined_message: int
    jane_message: int
    digests: dict[str, str]


@pytest.fixture
def cli(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> InProcessCli:
    """A migrated database with the tenant acme, and the CLI on it."""
    config = tmp_path / "mailledger.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n[storage]\nblob_dir = "{tmp_path / "blobs"}"\n',
        encoding="utf-8",
    )
    run = InProcessCli(capsys, config)
    run("db", "upgrade")
    run("tenant", "add", "acme", "--capture-domain", CAPTURE, "--customer-domain", "acme.example")
    run("staff", "add", "acme", "richard", "--address", "richard@acme.example")
    run("staff", "add", "acme", "jane", "--address", "jane@acme.example")
    run("contact", "add", "acme", "carol@client.example", "--name", "Carol")
    run("contact", "add", "acme", "dave@other.example", "--name", "Dave")
    return run


@pytest.fixture
def sessions(database_url: str) -> Any:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _message(
    session: Session, blobs: BlobStore, name: str, staff: list[Staff], state: MessageState
) -> tuple[ReceivedMessage, str]:
    raw = f"Message-ID: <{name}@client.example>\r\nSubject: {name}\r\n\r\n{name}\r\n".encode()
    digest = blobs.put(raw)
    message = ReceivedMessage(
        queue_id=name.upper(),
        trace_id=f"T{name}",
        blob=digest,
        size=len(raw),
        peer="127.0.0.1:5000",
        mail_from="carol@client.example",
        rcpt_to=[f"{s.username}@{CAPTURE}" for s in staff],
        state=state,
        message_id=f"<{name}@client.example>",
    )
    for member in staff:
        message.routes.append(
            MessageRoute(
                tenant_id=member.tenant_id,
                kind=RouteKind.USER,
                staff_id=member.id,
                rcpt=f"{member.username}@{CAPTURE}",
            )
        )
    message.trace.append(TraceEntry(step="authenticate", decision="spf=pass"))
    session.add(message)
    session.flush()
    return message, digest


def _activity(
    session: Session,
    message: ReceivedMessage,
    owner: Staff,
    *,
    parties: list[tuple[str, PartyKind, int | None]],
    attachment: str,
    minutes: int,
) -> Activity:
    activity = Activity(
        tenant_id=owner.tenant_id,
        dedupe_key=f"mid:{message.message_id}",
        direction=Direction.INBOUND,
        staff_id=owner.id,
        subject=message.queue_id,
        from_address="carol@client.example",
        message_id=message.message_id,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        raw_blob=message.blob,
        participants=[
            Participant(
                role="from" if kind is PartyKind.CONTACT else "to",
                address=address,
                kind=kind,
                staff_id=ref if kind is PartyKind.STAFF else None,
                contact_id=ref if kind is PartyKind.CONTACT else None,
            )
            for address, kind, ref in parties
        ],
        attachments=[
            Attachment(filename="a.pdf", content_type="application/pdf", size=3, blob=attachment)
        ],
    )
    session.add(activity)
    session.flush()
    for route in message.routes:
        activity.sources.append(
            ActivitySource(
                message_id=message.id, route_id=route.id, kind=route.kind, staff_id=route.staff_id
            )
        )
        route.activity_id = activity.id
        route.outcome = "recorded"
    session.flush()
    return activity


def _build(sessions: sessionmaker[Session], blobs: BlobStore) -> World:
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        richard = directory.find_staff(session, tenant, "richard")
        jane = directory.find_staff(session, tenant, "jane")
        carol = directory.find_contact(session, tenant, "carol@client.example")
        dave = directory.find_contact(session, tenant, "dave@other.example")
        richard.password_hash = "$scrypt$not-a-real-hash"
        session.add(
            ForwardingCheck(
                staff_id=richard.id,
                token="t" * 40,
                expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                proven_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
        session.add(NeverLog(tenant_id=tenant.id, staff_id=richard.id, pattern="x.example"))
        only_attachment = blobs.put(b"only Richard's attachment")
        common_attachment = blobs.put(b"an attachment two activities share")
        m1, d1 = _message(session, blobs, "m1", [richard], MessageState.PROCESSED)
        m2, d2 = _message(session, blobs, "m2", [richard, jane], MessageState.PROCESSED)
        m3, d3 = _message(session, blobs, "m3", [richard], MessageState.QUARANTINED)
        m4, d4 = _message(session, blobs, "m4", [jane], MessageState.PROCESSED)
        carol_row = ("carol@client.example", PartyKind.CONTACT, carol.id)
        a1 = _activity(
            session,
            m1,
            richard,
            parties=[carol_row, ("richard@acme.example", PartyKind.STAFF, richard.id)],
            attachment=only_attachment,
            minutes=1,
        )
        a2 = _activity(
            session,
            m2,
            richard,
            parties=[
                carol_row,
                ("dave@other.example", PartyKind.CONTACT, dave.id),
                ("richard@acme.example", PartyKind.STAFF, richard.id),
                ("jane@acme.example", PartyKind.STAFF, jane.id),
            ],
            attachment=common_attachment,
            minutes=2,
        )
        a3 = _activity(
            session,
            m4,
            jane,
            parties=[carol_row, ("jane@acme.example", PartyKind.STAFF, jane.id)],
            attachment=common_attachment,
            minutes=3,
        )
        return World(
            only_richard=a1.id,
            shared=a2.id,
            only_jane=a3.id,
            richard_message=m1.id,
            shared_message=m2.id,
            quarantined_message=m3.id,
            jane_message=m4.id,
            digests={
                "m1": d1,
                "m2": d2,
                "m3": d3,
                "m4": d4,
                "only_attachment": only_attachment,
                "common_attachment": common_attachment,
            },
        )


def _count(session: Session, model: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _blob_files(root: Path) -> set[str]:
    return {p.name for p in root.glob("??/*") if len(p.name) == 64}


@pytest.mark.postgres
def test_staff_remove_keep_history(
    cli: InProcessCli, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """--keep-history: every activity, message and blob stays; the address, login and proofs go."""
    blobs = BlobStore(tmp_path / "blobs")
    world = _build(sessions, blobs)
    before = _blob_files(tmp_path / "blobs")
    out = cli("staff", "remove", "acme", "richard", "--keep-history")
    assert "history kept: 2 activity(ies) stay" in out
    assert "relay password yes, 1 forwarding proof(s)" in out
    assert _blob_files(tmp_path / "blobs") == before
    with sessions() as session:
        assert _count(session, Activity) == 3
        assert _count(session, ReceivedMessage) == 4
        assert _count(session, ActivitySource) == 4
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        assert richard.removed_at is not None and richard.password_hash is None
        assert _count(session, ForwardingCheck) == 0
        assert _count(session, StaffAddress, StaffAddress.staff_id == richard.id) == 0
        assert _count(session, NeverLog) == 0
        kept = session.get_one(Activity, world.only_richard)
        assert kept.staff_id == richard.id  # the history still names him
    refused = RecipientRouter(sessions).route(f"richard@{CAPTURE}")
    assert isinstance(refused, Refusal)
    assert (refused.reply.code, refused.reply.status) == (550, "5.1.1")
    assert isinstance(RecipientRouter(sessions).route(f"jane@{CAPTURE}"), Route)
    # The list says he was removed; his own address is free for someone else.
    (line,) = [row for row in cli("staff", "list", "acme").splitlines() if "richard" in row]
    assert line.split()[-1] == "removed"
    cli("staff", "add", "acme", "richard2", "--address", "richard@acme.example")
    # A second removal is a clear error, and the username is not silently reused.
    cli("staff", "remove", "acme", "richard", "--keep-history", expect=1)
    assert "was removed on" in cli.err and "Traceback" not in cli.err
    cli("staff", "add", "acme", "richard", "--address", "r@acme.example", expect=1)
    assert "choose another username" in cli.err


@pytest.mark.postgres
def test_staff_remove_remove_history(
    cli: InProcessCli, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """--remove-history: what only he brought in goes, rows and files; shared mail loses him."""
    blobs = BlobStore(tmp_path / "blobs")
    world = _build(sessions, blobs)
    before = _blob_files(tmp_path / "blobs")
    out = cli("staff", "remove", "acme", "richard", "--remove-history")
    assert "1 activity(ies) deleted, 1 shared one(s) kept" in out
    assert "2 received message(s) and 3 stored blob(s) deleted" in out
    gone = {world.digests[k] for k in ("m1", "m3", "only_attachment")}
    assert _blob_files(tmp_path / "blobs") == before - gone
    for digest in gone:
        assert not blobs.path(digest).exists()
    with sessions() as session:
        assert _count(session, Staff, Staff.username == "richard") == 0
        assert {a.id for a in session.scalars(select(Activity))} == {world.shared, world.only_jane}
        assert {m.id for m in session.scalars(select(ReceivedMessage))} == {
            world.shared_message,
            world.jane_message,
        }
        shared = session.get_one(Activity, world.shared)
        jane = session.scalars(select(Staff).where(Staff.username == "jane")).one()
        assert [s.staff_id for s in shared.sources] == [jane.id]
        assert shared.staff_id == jane.id  # the shared activity now belongs to Jane
        assert sorted(p.address for p in shared.participants) == [
            "carol@client.example",
            "dave@other.example",
            "jane@acme.example",
        ]
        routes = session.scalars(
            select(MessageRoute).where(MessageRoute.message_id == world.shared_message)
        ).all()
        assert [r.staff_id for r in routes] == [jane.id]
        assert _count(session, ForwardingCheck) == 0
        assert _count(session, StaffAddress) == 1  # Jane's
    assert isinstance(RecipientRouter(sessions).route(f"richard@{CAPTURE}"), Refusal)
    cli("staff", "remove", "acme", "richard", "--remove-history", expect=1)
    assert "has no staff member 'richard'" in cli.err


def test_staff_remove_asks_for_a_choice(cli: InProcessCli, sessions: sessionmaker[Session]) -> None:
    """Neither flag: exit 2 and a message that names both; nothing changes."""
    cli("staff", "remove", "acme", "richard", expect=2)
    assert "--keep-history" in cli.err and "--remove-history" in cli.err
    with sessions() as session:
        assert _count(session, Staff, Staff.removed_at.is_not(None)) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--config",
                str(cli.config),
                "staff",
                "remove",
                "acme",
                "richard",
                "--keep-history",
                "--remove-history",
            ]
        )
    assert exit_info.value.code == 2
    cli("contact", "remove", "acme", "carol@client.example", expect=2)
    assert "--keep-history" in cli.err


@pytest.mark.postgres
def test_contact_remove_both_ways(
    cli: InProcessCli, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """Keeping history leaves every activity; removing it deletes those only Carol was in."""
    blobs = BlobStore(tmp_path / "blobs")
    world = _build(sessions, blobs)
    before = _blob_files(tmp_path / "blobs")
    out = cli("contact", "remove", "acme", "dave@other.example", "--keep-history")
    assert "history kept: 1 activity(ies) stay" in out
    with sessions() as session:
        assert _count(session, Activity) == 3
        assert _count(session, Contact) == 1
        assert _count(session, ContactAddress) == 1
    assert _blob_files(tmp_path / "blobs") == before
    cli("contact", "remove", "acme", "dave@other.example", "--keep-history", expect=1)
    assert "has no contact 'dave@other.example'" in cli.err

    # Carol is the only outside party of the two activities Richard and Jane brought in alone;
    # the shared one had Dave too (kept as an address after his removal): it keeps, minus her.
    out = cli("contact", "remove", "acme", "carol@client.example", "--remove-history")
    assert "2 activity(ies) deleted, 1 shared one(s) kept" in out
    with sessions() as session:
        assert {a.id for a in session.scalars(select(Activity))} == {world.shared}
        shared = session.get_one(Activity, world.shared)
        assert "carol@client.example" not in {p.address for p in shared.participants}
        # m1 and m4 went with their activities; m3 (quarantined) and m2 (shared) stay.
        assert {m.id for m in session.scalars(select(ReceivedMessage))} == {
            world.shared_message,
            world.quarantined_message,
        }
        assert _count(session, Contact) == 0
    gone = {world.digests[k] for k in ("m1", "m4", "only_attachment")}
    assert _blob_files(tmp_path / "blobs") == before - gone
