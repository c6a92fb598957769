"""A queue that outlives a server killed with SIGKILL in the middle of a delivery.

The whole server runs as a subprocess (``python -m mailledger.service.server``) and delivers by MX
lookup, through the test DNS server, to two recording SMTP servers on 127.0.0.61/.62. One
recorder holds its reply to one DATA back; while it waits, the server is killed with SIGKILL.
The recorder then answers 250 to a sender that is gone, exactly the case where the remote host
has the message and we never heard so. After a restart every queued message must be delivered,
none lost, and only that one may arrive twice (RFC 5321 §6.1: a duplicate, never a loss).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailledger.store import outbox
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, OutboundKind, OutboundMessage, OutboundState
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.recorder import Recorder, Transaction, start_recorders
from mailledger.testing.servers import ServerProcess, write_config

pytestmark = pytest.mark.slow

MESSAGES = 12
LEASE_SECONDS = 1.5
A_HOST, B_HOST = "127.0.0.61", "127.0.0.62"


def write_relay_config(tmp_path: Path, dns: DNSServer, smtp_port: int) -> tuple[Path, int]:
    """SQLite and blobs under ``tmp_path``; MX delivery through the test's DNS, one at a time."""
    port = free_port()
    config = write_config(
        tmp_path / "relay.toml",
        database_url=f"sqlite:///{tmp_path / 'relay.db'}",
        blob_dir=tmp_path / "blobs",
        capture_port=port,
        service={"hostname": "relay.mailledger.test"},
        relay={
            "smtp_port": smtp_port,
            "retry_schedule_seconds": [0.2, 0.2, 0.5, 1, 1, 1],
            "lease_seconds": LEASE_SECONDS,
            "poll_interval_seconds": 0.05,
            # One delivery at a time: exactly one is in flight when the kill lands.
            "max_per_domain": 1,
        },
        dns={"nameservers": [dns.address], "timeout_seconds": 1},
    )
    return config, port


@pytest.fixture
def dns() -> Iterator[DNSServer]:
    """example.net: two MX hosts of equal preference, so both see traffic."""
    with DNSServer(negative_ttl=0) as server:
        server.add("example.net", "MX", (10, "a.example.net"))
        server.add("example.net", "MX", (10, "b.example.net"))
        server.add("a.example.net", "A", A_HOST)
        server.add("b.example.net", "A", B_HOST)
        yield server


def subject_of_bytes(data: bytes) -> str:
    return data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0].decode()


def subject_of(transaction: Transaction) -> str:
    return subject_of_bytes(transaction.data)


def subject_of_blob(blobs: BlobStore, digest: str) -> str:
    return subject_of_bytes(blobs.get(digest))


def received(recorders: list[Recorder]) -> Counter[str]:
    """How often each subject was accepted by the remote hosts."""
    return Counter(subject_of(t) for r in recorders for t in r.accepted)


def test_queue_survives_sigkill_mid_delivery(tmp_path: Path, dns: DNSServer) -> None:
    """SIGKILL while a remote host holds its DATA reply: nothing lost, one duplicate at most."""
    smtp_port, recorders = start_recorders([A_HOST, B_HOST])
    config, capture_port = write_relay_config(tmp_path, dns, smtp_port)
    engine = make_engine(f"sqlite:///{tmp_path / 'relay.db'}")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    blobs = BlobStore(tmp_path / "blobs")
    subjects = [f"crash-{n}" for n in range(MESSAGES)]
    raws = {s: make_email(sender="Richard <richard@acme.example>", subject=s) for s in subjects}
    with sessions.begin() as session:
        for subject in subjects:
            outbox.enqueue(
                session,
                blobs,
                raw=raws[subject],
                mail_from="richard@acme.example",
                rcpt_to=["bob@example.net"],
                kind=OutboundKind.RELAY,
            )
    # ``start`` waits for the capture banner; delivery is what the test watches.
    server = ServerProcess.for_config(config, port=capture_port, log=tmp_path / "server.log")
    try:
        for recorder in recorders:
            recorder.data_delay = 0.4  # every DATA reply takes a moment
        server.start()
        deadline = time.monotonic() + 30
        # The third message's DATA has arrived and its reply is being held: kill the sender.
        while sum(len(r.transactions) for r in recorders) < 3:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.01)
        server.kill()
        for recorder in recorders:
            recorder.data_delay = 0.0
        # With one delivery at a time, the last DATA before the kill is the one whose reply
        # was held: the remote host committed it, the killed sender never heard so.
        cut_off = subject_of(
            max((t for r in recorders for t in r.transactions), key=lambda t: t.at)
        )

        with sessions() as session:
            rows = list(session.scalars(select(OutboundMessage)))
        assert len(rows) == MESSAGES  # the queue is all there
        (cut_row,) = [r for r in rows if subject_of_blob(blobs, r.blob) == cut_off]
        assert cut_row.state is OutboundState.QUEUED
        assert cut_row.claimed_by  # claimed by the dead process; its lease has to lapse

        server.start()
        deadline = time.monotonic() + 60
        while True:
            with sessions() as session:
                states = list(session.scalars(select(OutboundMessage.state)))
            if all(s is OutboundState.DELIVERED for s in states):
                break
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
    finally:
        server.stop(timeout_seconds=30)
        for recorder in recorders:
            recorder.close()
        engine.dispose()

    counts = received(recorders)
    assert set(counts) == set(subjects), "every queued message was delivered"
    duplicates = {s: n for s, n in counts.items() if n > 1}
    # Only the delivery cut off mid-DATA may repeat, and only once.
    assert set(duplicates) <= {cut_off}
    assert all(n == 2 for n in duplicates.values())
    for recorder in recorders:
        for transaction in recorder.accepted:
            assert transaction.data == raws[subject_of(transaction)]
