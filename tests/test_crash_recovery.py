"""Killing the server with SIGKILL mid-stream loses no acknowledged message.

The real server runs as a subprocess (``python -m mailledger.service.server``); twenty client
threads send 2,000 messages and retry after a refused connection or a 4xx as a real MTA
would, while the test kills the server three times and restarts it. Every message that got
its 250 must be stored, no message may be stored more often than it was sent, and every
stored message must reach a final state once processing resumes after the restarts.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
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
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.smtp import send_raw

pytestmark = pytest.mark.slow

TOTAL = 2000
CLIENTS = 20
KILL_AFTER = (400, 900, 1400)  # acknowledged messages before each SIGKILL
FINAL = {MessageState.PROCESSED, MessageState.QUARANTINED, MessageState.FAILED}
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]+)>", re.IGNORECASE | re.MULTILINE)
DEADLINE_SECONDS = 240


def write_config(tmp_path: Path, port: int, nameserver: str) -> Path:
    config = tmp_path / "mailledger.toml"
    config.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "crash.db"}"

[storage]
blob_dir = "{tmp_path / "blobs"}"

[capture]
listen = ["127.0.0.1:{port}"]
timeout_seconds = 30

[processing]
lease_seconds = 2
poll_interval_seconds = 0.1
# The same sender 2,000 times is this test, not a mail loop.
loop_threshold = 100000

[dns]
# The test's own DNS server: answers come at once, and nothing leaves the machine.
nameservers = ["{nameserver}"]
timeout_seconds = 2

[verify]
# This test is about durability, not authentication: loopback counts as a trusted forwarder.
demo_trust_loopback = true

[logging]
format = "json"
level = "warning"
""",
        encoding="utf-8",
    )
    return config


class Server:
    """The server subprocess, started and killed by the test."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILLEDGER_")}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailledger.service.server", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.starts += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


class Clients:
    """Twenty sending threads that retry until each message is acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.next = 0
        self.attempts: Counter[str] = Counter()
        self.acked: set[str] = set()
        self.refused: dict[str, str] = {}
        self.sent: dict[str, bytes] = {}

    def take(self) -> int | None:
        with self.lock:
            if self.next >= TOTAL:
                return None
            self.next += 1
            return self.next - 1

    def run(self) -> None:
        stop_at = time.monotonic() + DEADLINE_SECONDS
        while (n := self.take()) is not None:
            message_id = f"crash-{n}@client.example"
            data = make_email(message_id=message_id, subject=f"Message {n}")
            self.sent[message_id] = data
            while time.monotonic() < stop_at:
                with self.lock:
                    self.attempts[message_id] += 1
                try:
                    tx = send_raw(
                        self.port,
                        "carol@client.example",
                        ["richard@acme.capture.example"],
                        data,
                        io_timeout=10,
                    )
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.05)  # the server is down: an MTA queues and retries
                    continue
                if tx.accepted:
                    with self.lock:
                        self.acked.add(message_id)
                    break
                last = tx.data or (tx.rcpt[-1] if tx.rcpt else tx.mail)
                if 500 <= last[0] < 600:
                    self.refused[message_id] = f"{last[0]} {last[1]}"
                    break
                time.sleep(0.05)  # 4xx: try again later

    @property
    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


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
    config = write_config(tmp_path, port, dns_server.address)
    engine = make_engine(f"sqlite:///{tmp_path / 'crash.db'}")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        seed_demo(session)

    server = Server(config, port, tmp_path / "server.log")
    server.start()
    clients = Clients(port)
    threads = [threading.Thread(target=clients.run, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for threshold in KILL_AFTER:
            deadline = time.monotonic() + DEADLINE_SECONDS
            while clients.acked_count < threshold and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()
            time.sleep(0.2)  # let clients meet a refused connection
            server.start()
        for thread in threads:
            thread.join(DEADLINE_SECONDS)
        assert not any(thread.is_alive() for thread in threads)
        assert clients.refused == {}
        assert len(clients.acked) == TOTAL

        # Processing resumes after the restarts: wait for every message to reach a final state.
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            with sessions() as session:
                states = session.scalars(select(ReceivedMessage.state)).all()
            if states and all(state in FINAL for state in states):
                break
            time.sleep(0.5)
        assert server.terminate() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
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
        assert raw == clients.sent[message_id]
        stored[message_id] += 1
    engine.dispose()

    assert server.starts == 1 + len(KILL_AFTER)
    # The kills landed mid-stream: some transactions were cut off and had to be retried.
    assert sum(clients.attempts.values()) > TOTAL
    print(  # shown with -s: how hard the kills hit
        f"attempts={sum(clients.attempts.values())} rows={len(rows)} "
        f"duplicates={sum(n - 1 for n in stored.values())}"
    )
    lost = clients.acked - set(stored)
    assert not lost, f"{len(lost)} acknowledged messages were lost, e.g. {sorted(lost)[:5]}"
    extra = {m: n for m, n in stored.items() if n > clients.attempts[m]}
    assert not extra, f"stored more often than sent: {extra}"
    unfinished = Counter(row.state for row in rows if row.state not in FINAL)
    assert not unfinished, f"not in a final state: {dict(unfinished)}"
