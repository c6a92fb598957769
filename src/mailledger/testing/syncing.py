"""Mailbox sync in tests and the benchmark: an account on the test Dovecot, a pass, processing.

The account row is written as ``account add`` writes it (the password sealed with the
settings' key); passes run through the real engine (``sync.passes``) and what they fetched is
processed by the real capture worker, so activities come out of the same pipeline as SMTP
mail's.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.worker import Worker
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.mail.headerscan import message_id_in_head
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.inbox import Received, Route, SessionFacts, TraceLine, add_received
from mailledger.store.models import (
    AccountKind,
    Activity,
    ActivitySource,
    MailboxAccount,
    ReceivedMessage,
    RouteKind,
    Staff,
    SyncMode,
    Tenant,
    utcnow,
)
from mailledger.store.queueids import new_queue_id
from mailledger.store.secretbox import SecretBox
from mailledger.sync.passes import Syncer
from mailledger.testing.dovecot import Dovecot


def add_account(
    sessions: sessionmaker[Session],
    settings: Settings,
    server: Dovecot,
    user: str,
    *,
    tenant: str = "acme",
    staff: str = "richard",
    mode: SyncMode = SyncMode.SWEEP,
    since: datetime | None = None,
    security: str = "none",
    extra_folders: Sequence[str] = (),
    source_folder: str = "mailledger",
    processed_folder: str = "mailledger/Processed",
    authserv_id: str = "",
) -> int:
    """A mailbox account of ``staff`` on the test server's ``user``; its id.

    ``authserv_id``: whose Authentication-Results on top its mail is judged on
    (``account add --authserv-id``); empty: nobody's, every verdict ``none``.
    """
    box = SecretBox.from_file(settings.secrets.key_file)
    port = server.tls_port if security == "tls" else server.port
    with sessions.begin() as session:
        tenant_row = session.scalars(select(Tenant).where(Tenant.name == tenant)).one()
        staff_row = session.scalars(
            select(Staff).where(Staff.tenant_id == tenant_row.id, Staff.username == staff)
        ).one()
        account = MailboxAccount(
            tenant_id=tenant_row.id,
            staff_id=staff_row.id,
            kind=AccountKind.IMAP,
            host=server.host,
            port=port,
            security=security,
            login=user,
            secret=box.seal(server.users[user].password),
            mode=mode,
            since=since or utcnow() - timedelta(days=1),
            extra_folders=list(extra_folders),
            source_folder=source_folder,
            processed_folder=processed_folder,
            authserv_id=authserv_id,
        )
        session.add(account)
        session.flush()
        return account.id


def submit_as_staff(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    raw: bytes,
    demo: DemoAddresses,
    *,
    staff: str = "richard",
) -> int:
    """Store ``raw`` as the relay stores a submitted message (``relay.outgoing``); its id.

    A ``log`` route and ``submitted_by_staff_id``, written by the one intake writer, as a
    staff member's mail through the submission port or ``POST /v1/messages`` is.
    """
    with sessions.begin() as session:
        staff_row = session.scalars(select(Staff).where(Staff.username == staff)).one()
        facts = SessionFacts("127.0.0.1:4000", "client", "richard@acme.example", [], "", "T1")
        route = Route(staff_row.tenant_id, RouteKind.LOG, staff_row.id, demo.log_capture)
        (message_id,) = add_received(
            session,
            [
                Received(
                    queue_id=new_queue_id(),
                    facts=facts,
                    routes=[route],
                    blob=blobs.put(raw),
                    size=len(raw),
                    first=TraceLine("submission", "accepted", "submitted in a test"),
                    submitted_by_staff_id=staff_row.id,
                    message_id=message_id_in_head(raw),
                )
            ],
        )
        return message_id


def syncer(
    sessions: sessionmaker[Session], blobs: BlobBackend, settings: Settings, server: Dovecot
) -> Syncer:
    """The engine, trusting the test server's certificate."""
    return Syncer(
        sessions,
        blobs,
        settings,
        SecretBox.from_file(settings.secrets.key_file),
        cafile=str(server.cert_path),
    )


def process_received(
    sessions: sessionmaker[Session], blobs: BlobBackend, settings: Settings
) -> int:
    """Process every waiting received message with the capture worker; how many it took."""
    worker = Worker(sessions, blobs, settings)
    done = 0
    while ids := worker.claim_batch():
        worker.process_batch(ids)
        done += len(ids)
    return done


def activity_count(sessions: sessionmaker[Session]) -> int:
    """Activities in the record."""
    with sessions() as session:
        return int(session.scalar(select(func.count(Activity.id))) or 0)


def sources_by_activity(sessions: sessionmaker[Session]) -> dict[int, list[str]]:
    """Each activity's sources, by route kind (``user``, ``log``, ``sync``)."""
    with sessions() as session:
        rows = session.execute(
            select(ActivitySource.activity_id, ActivitySource.kind).order_by(ActivitySource.id)
        ).all()
    found: dict[int, list[str]] = {}
    for activity_id, kind in rows:
        found.setdefault(int(activity_id), []).append(str(kind.value))
    return found


def synced_messages(sessions: sessionmaker[Session]) -> list[ReceivedMessage]:
    """Received messages sync fetched, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(ReceivedMessage)
                .where(ReceivedMessage.mailbox_account_id.is_not(None))
                .order_by(ReceivedMessage.id)
            )
        )
