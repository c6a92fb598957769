"""The sync worker ``serve()`` runs: claims accounts, runs passes, IDLEs, hands back at stop.

A broken account (nothing listens on its port) fails on its own, in words, while the good
one is synced; new mail reaches the record through IDLE, long before the next full pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.service.syncing import SyncWorker
from mailledger.store.blobs import BlobStore
from mailledger.store.models import AccountStatus, MailboxAccount, MailboxError
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.syncing import add_account, synced_messages

USER = "richard.smith@mail.test.example"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox."""
    for server in running_dovecot():
        server.add_user(USER, "correct horse")
        yield server


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Sync that looks often and holds short leases, as a test needs."""
    quick = {"poll_interval_seconds": 0.05, "lease_seconds": 2.0, "timeout_seconds": 10.0}
    return settings.model_copy(update={"sync": settings.sync.model_copy(update=quick)})


async def _until(check: object, what: str, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_worker_syncs_idles_and_keeps_a_broken_account_apart(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """One good account synced and then IDLE; one refused account in `error`, with words."""
    dovecot.append(USER, "INBOX", [make_email(subject="first")])
    good = add_account(sessions, settings, dovecot, USER)
    broken = add_account(sessions, settings, dovecot, USER)
    with sessions.begin() as session:
        session.get_one(MailboxAccount, broken).port = free_port()
    woken: list[int] = []
    worker = SyncWorker(
        sessions, blobs, settings, on_stored=lambda: woken.append(1), cafile=str(dovecot.cert_path)
    )
    task = asyncio.create_task(worker.run())
    try:

        def statuses() -> dict[int, AccountStatus]:
            with sessions() as session:
                return {a.id: a.status for a in session.scalars(select(MailboxAccount))}

        await _until(
            lambda: statuses() == {good: AccountStatus.ENABLED, broken: AccountStatus.ERROR},
            "the first passes",
        )
        assert len(synced_messages(sessions)) == 1
        await asyncio.to_thread(dovecot.append, USER, "INBOX", [make_email(subject="second")])
        await _until(lambda: len(synced_messages(sessions)) == 2, "IDLE to bring new mail")
        assert woken
    finally:
        await worker.stop()
        await task
    with sessions() as session:
        accounts = {a.id: a for a in session.scalars(select(MailboxAccount))}
        errors = session.scalars(select(MailboxError).where(MailboxError.account_id == broken))
        (error,) = errors.all()
    assert all(a.claimed_by is None for a in accounts.values())
    assert accounts[good].retry_at is not None
    assert accounts[broken].failures == 1
    assert error.what and error.fix
