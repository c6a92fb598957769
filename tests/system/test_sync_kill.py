"""A big first sync survives ``kill -9`` halfway: every message is recorded exactly once.

``mailledger serve`` runs as a subprocess, as an operator runs it, and backfills a mailbox of
a few thousand messages from Dovecot in batches. Once about half are stored it is killed
with SIGKILL, mid-batch; after a restart the account's lease lapses, the pass resumes where
the last committed batch left it, and the processing worker records every message as one
activity. The issue's 20,000 messages run with ``MAILLEDGER_BIG_TESTS=1``; ``make test`` runs
2,000, which crosses the same batch boundaries (eight batches of 250).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import seed_demo
from mailledger.config import load_settings
from mailledger.store.engine import make_engine, make_sessionmaker, reading
from mailledger.store.models import Activity, MailboxMessage, MessageState, ReceivedMessage
from mailledger.store.secretbox import ensure_key_file
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess, write_config
from mailledger.testing.syncing import add_account

pytestmark = pytest.mark.slow

MESSAGES = 20_000 if os.environ.get("MAILLEDGER_BIG_TESTS") == "1" else 2_000
USER = "richard.smith@mail.test.example"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox, full of client mail."""
    for server in running_dovecot():
        server.add_user(USER, "correct horse")
        yield server


def _client_mail(n: int) -> bytes:
    """Carol's n-th mail as her provider received it: DKIM-signed by her domain.

    The provider's Authentication-Results authenticate her, so a few thousand mails from one
    sender are correspondence, not a flood the volume brake holds back.
    """
    results = (
        b"Authentication-Results: mx.provider.example; dkim=pass header.d=client.example;"
        b" dmarc=pass header.from=client.example\r\n"
    )
    return results + make_email(subject=f"order {n}", message_id=f"order-{n}@client.example")


def _count(sessions: sessionmaker[Session], statement: Select[tuple[int]]) -> int:
    # As a reader: a write transaction would queue for SQLite's lock behind the server's
    # transactions, and the pass it watches could finish before the count came back.
    with reading(sessions) as session:
        return int(session.scalar(statement) or 0)


def test_a_backfill_killed_halfway_records_every_message_once(
    tmp_path: Path, dovecot: Dovecot
) -> None:
    """SIGKILL at half, restart: exactly MESSAGES received messages and activities."""
    dovecot.append_many(USER, "INBOX", (_client_mail(n) for n in range(MESSAGES)))
    database = f"sqlite:///{tmp_path / 'sync.db'}"
    key_file = tmp_path / "secret.key"
    ensure_key_file(key_file)
    port = free_port()
    config = write_config(
        tmp_path / "sync.toml",
        database_url=database,
        blob_dir=tmp_path / "blobs",
        capture_port=port,
        processing={"poll_interval_seconds": 0.05},
        secrets={"key_file": str(key_file)},
        sync={"batch_size": 250, "lease_seconds": 2.0, "poll_interval_seconds": 0.2},
    )
    settings = load_settings(config, environ={})
    from mailledger.store.models import Base

    engine = make_engine(database)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        seed_demo(session)
    add_account(sessions, settings, dovecot, USER, authserv_id="mx.provider.example")
    synced = select(func.count(ReceivedMessage.id))

    server = ServerProcess.for_config(config, port=port, log=tmp_path / "server.log")
    try:
        server.start()
        deadline = time.monotonic() + 300
        while _count(sessions, synced) < MESSAGES // 2:
            assert time.monotonic() < deadline, server.log_tail()
            assert server.running, server.log_tail()
            time.sleep(0.05)
        server.kill()
        killed_at = _count(sessions, synced)
        assert killed_at < MESSAGES, "the backfill finished before the kill"

        server = ServerProcess.for_config(config, port=port, log=tmp_path / "server2.log")
        server.start()
        done = select(func.count(ReceivedMessage.id)).where(
            ReceivedMessage.state != MessageState.RECEIVED
        )
        deadline = time.monotonic() + 600
        while _count(sessions, done) < MESSAGES or _count(sessions, synced) < MESSAGES:
            assert time.monotonic() < deadline, server.log_tail()
            assert server.running, server.log_tail()
            time.sleep(0.2)
        time.sleep(1.0)  # anything extra would show now
    finally:
        server.stop()

    assert _count(sessions, synced) == MESSAGES
    assert _count(sessions, select(func.count(MailboxMessage.id))) == MESSAGES
    assert _count(sessions, select(func.count(Activity.id))) == MESSAGES
    assert _count(sessions, select(func.count(func.distinct(Activity.message_id)))) == MESSAGES
    assert (
        _count(
            sessions,
            select(func.count(ReceivedMessage.id)).where(
                ReceivedMessage.state != MessageState.PROCESSED
            ),
        )
        == 0
    )
