"""Killing the server with SIGKILL mid-stream loses no acknowledged message.

The real server runs as a subprocess (``python -m mailledger.service.server``); twenty client
threads send 2,000 messages and retry after a refused connection or a 4xx as a real MTA
would, while the test kills the server three times and restarts it. Every message that got
its 250 must be stored, no message may be stored more often than it was sent, and every
stored message must reach a final state once processing resumes after the restarts.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailledger.cli.demo import seed_demo
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, MessageState, ReceivedMessage
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.senders import Senders
from mailledger.testing.servers import ServerProcess, write_config

pytestmark = pytest.mark.slow

TOTAL = 2000
CLIENTS = 20
KILL_AFTER = (400, 900, 1400)  # acknowledged messages before each SIGKILL
FINAL = {MessageState.PROCESSED, MessageState.QUARANTINED, MessageState.FAILED}
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
DEADLINE_SECONDS = 240


def write_crash_config(tmp_path: Path, port: int, nameserver: str) -> Path:
    """SQLite and blobs under ``tmp_path``, short leases, the test's own DNS server."""
    return write_config(
        tmp_path / "mailledger.toml",
        database_url=f"sqlite:///{tmp_path / 'crash.db'}",
        blob_dir=tmp_path / "blobs",
        capture_port=port,
        capture={"timeout_seconds": 30},
        # The same sender 2,000 times is this test, not a mail loop.
        processing={"lease_seconds": 2, "poll_interval_seconds": 0.1, "loop_threshold": 100000},
        # The test's own DNS server: answers come at once, and nothing leaves the machine.
        dns={"nameservers": [nameserver], "timeout_seconds": 2},
        # This test is about durability, not authentication: loopback is a trusted forwarder.
        verify={"demo_trust_loopback": True},
        logging={"level": "warning"},
    )


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """A loopback DNS server where the sender's domain publishes SPF and DMARC."""
    with DNSServer() as server:
        server.add("client.example", "TXT", "v=spf1 -all")
        server.add("_dmarc.client.example", "TXT", "v=DMARC1; p=reject")
        yield server


def test_sigkill_loses_no_acknowledged_message(tmp_path: Path, dns_server: DNSServer) -> None:
    """Three SIGKILLs mid-stream: every 250 is stored, never more than sent, all processed."""
    port = free_port()
    config = write_crash_config(tmp_path, port, dns_server.address)
    engine = make_engine(f"sqlite:///{tmp_path / 'crash.db'}")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        seed_demo(session)

    server = ServerProcess.for_config(config, port=port, log=tmp_path / "server.log")
    server.start()
    senders = Senders([port], TOTAL, prefix="crash", deadline_seconds=DEADLINE_SECONDS)
    senders.start(CLIENTS)
    try:
        for threshold in KILL_AFTER:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while senders.acked_count < threshold and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()
            time.sleep(0.2)  # let clients meet a refused connection
            server.start()
        assert senders.join(DEADLINE_SECONDS), "a sender thread is still running"
        assert senders.refused == {}
        assert len(senders.acked) == TOTAL

        # Processing resumes after the restarts: wait for every message to reach a final state.
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            with sessions() as session:
                states = session.scalars(select(ReceivedMessage.state)).all()
            if states and all(state in FINAL for state in states):
                break
            time.sleep(0.5)
        assert server.stop() == 0
    finally:
        server.kill()

    blobs = BlobStore(tmp_path / "blobs")
    stored: Counter[str] = Counter()
    with sessions() as session:
        rows = session.scalars(select(ReceivedMessage)).all()
    for row in rows:
        raw = blobs.get(row.blob)
        match = MESSAGE_ID.search(raw)
        assert match, row.queue_id
        message_id = match.group(1).decode()
        assert raw == senders.sent[message_id]
        stored[message_id] += 1
    engine.dispose()

    assert server.starts == 1 + len(KILL_AFTER)
    # The kills landed mid-stream: some transactions were cut off and had to be retried.
    assert sum(senders.attempts.values()) > TOTAL
    print(  # shown with -s: how hard the kills hit
        f"attempts={sum(senders.attempts.values())} rows={len(rows)} "
        f"duplicates={sum(n - 1 for n in stored.values())}"
    )
    lost = senders.acked - set(stored)
    assert not lost, f"{len(lost)} acknowledged messages were lost, e.g. {sorted(lost)[:5]}"
    extra = {m: n for m, n in stored.items() if n > senders.attempts[m]}
    assert not extra, f"stored more often than sent: {extra}"
    unfinished = Counter(row.state for row in rows if row.state not in FINAL)
    assert not unfinished, f"not in a final state: {dict(unfinished)}"
