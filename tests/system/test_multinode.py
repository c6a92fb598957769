"""Two nodes on one PostgreSQL share the work, and a node killed with SIGKILL loses nothing.

Two ``python -m mailledger.service.server`` processes (node-a, node-b) share a PostgreSQL database
and either a blob directory (``filesystem``; in production shared storage such as NFS) or
nothing else at all (``database``: blobs in PostgreSQL, each node with a spool directory of its
own that ends empty). Client threads send
inbound mail to both; outbound rows are queued for delivery through a recording smarthost.
While node-a holds claims on both queues it is frozen (SIGSTOP, so its claims can be read
without racing it) and then killed with SIGKILL. Afterwards:

- every message that got its 250 is stored, and every stored message was processed exactly
  once (one ``record`` step per row; one activity per Message-ID);
- the received messages node-a had claimed were finished by node-b after the kill;
- every outbound row is delivered; the only rows the smarthost may have seen twice are those
  node-a held at the kill (a 250 it may have received but never recorded: SMTP's inherent
  window, RFC 5321 §6.1), and node-b delivered each of those after the kill.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import seed_demo
from mailledger.config import DatabaseSettings, Settings, StorageSettings
from mailledger.store import outbox
from mailledger.store.blobbackend import BlobBackend, open_blob_backend
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.migrate import upgrade
from mailledger.store.models import (
    Activity,
    MessageState,
    OutboundKind,
    OutboundMessage,
    OutboundState,
    ReceivedMessage,
    TraceEntry,
    utcnow,
)
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.postgres import PostgresServer
from mailledger.testing.recorder import Recorder
from mailledger.testing.scrape import scrape, value
from mailledger.testing.senders import Senders
from mailledger.testing.servers import ServerProcess, write_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

INBOUND = 240
OUTBOUND = 60
CLIENTS = 8
LEASE_SECONDS = 3
DEADLINE_SECONDS = 120
FINAL = {MessageState.PROCESSED, MessageState.QUARANTINED, MessageState.FAILED}
RCPT = "richard@acme.capture.example"


def blob_dir(tmp_path: Path, name: str, backend: str) -> Path:
    """The shared directory for ``filesystem``; a node's own spool directory for ``database``."""
    return tmp_path / "blobs" if backend == "filesystem" else tmp_path / f"{name}-spool"


def node_config(
    tmp_path: Path, name: str, url: str, smarthost: int, backend: str
) -> tuple[Path, int, int]:
    """A node's configuration: shared database (and blobs), its own ports and identity."""
    port, metrics = free_port(), free_port()
    config = write_config(
        tmp_path / f"{name}.toml",
        database_url=url,
        blob_dir=blob_dir(tmp_path, name, backend),
        capture_port=port,
        storage={"min_free_bytes": 0, "backend": backend},
        capture={"timeout_seconds": 30},
        service={
            "node_id": name,
            # Delivery says EHLO with this name: the smarthost's record shows which node sent what.
            "hostname": f"{name}.capture.example",
        },
        processing={
            "lease_seconds": LEASE_SECONDS,
            "poll_interval_seconds": 0.1,
            "batch_size": 8,
            "loop_threshold": 100000,
        },
        relay={
            "smarthost": f"127.0.0.1:{smarthost}",
            "smarthost_require_tls": False,
            "lease_seconds": LEASE_SECONDS,
            "poll_interval_seconds": 0.1,
            "max_concurrent": 4,
        },
        # Nothing listens there and nothing needs it: loopback mail is trusted, delivery goes to
        # the smarthost. No lookup leaves the machine.
        dns={"nameservers": ["127.0.0.1:9"], "timeout_seconds": 0.5},
        verify={"demo_trust_loopback": True},
        metrics={"listen": f"127.0.0.1:{metrics}"},
        logging={"level": "warning"},
    )
    return config, port, metrics


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh PostgreSQL database with the schema (``mailledger db upgrade``) and the demo."""
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine).begin() as session:
        seed_demo(session)
    engine.dispose()
    yield url
    postgres_server.drop_database(name)


def queue_outbound(sessions: sessionmaker[Session], blobs: BlobBackend) -> set[str]:
    """OUTBOUND rows, one recipient each; returns their recipients."""
    rcpts = set()
    with sessions.begin() as session:
        for n in range(OUTBOUND):
            rcpt = f"client{n}@remote.example"
            raw = make_email(
                sender="Richard Smith <richard@acme.example>",
                to=f"<{rcpt}>",
                message_id=f"out-{n}@acme.example",
            )
            outbox.enqueue(
                session,
                blobs,
                raw=raw,
                mail_from="richard@acme.example",
                rcpt_to=[rcpt],
                kind=OutboundKind.RELAY,
            )
            rcpts.add(rcpt)
    return rcpts


def claims_of(sessions: sessionmaker[Session], node: str) -> tuple[set[int], set[str]]:
    """Received message ids and outbound recipients ``node`` holds a claim on, unfinished."""
    with sessions() as session:
        inbound = set(
            session.scalars(
                select(ReceivedMessage.id).where(
                    ReceivedMessage.claimed_by == node,
                    ReceivedMessage.state == MessageState.RECEIVED,
                )
            )
        )
        rows = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.claimed_by == node,
                OutboundMessage.state == OutboundState.QUEUED,
            )
        ).all()
        outbound = {rcpt for row in rows for rcpt in row.rcpt_to}
    return inbound, outbound


def all_done(sessions: sessionmaker[Session]) -> bool:
    with sessions() as session:
        waiting = session.scalar(
            select(func.count()).where(ReceivedMessage.state == MessageState.RECEIVED)
        )
        queued = session.scalar(
            select(func.count()).where(OutboundMessage.state == OutboundState.QUEUED)
        )
    return waiting == 0 and queued == 0


@pytest.mark.parametrize("backend", ["filesystem", "database"])
def test_two_nodes_share_the_work_and_survive_a_sigkill(
    tmp_path: Path, database: str, backend: str
) -> None:
    """No message lost, none processed twice, node-b takes over node-a's claims; with the
    ``database`` backend the nodes share no directory."""
    engine = make_engine(database)
    sessions = make_sessionmaker(engine)
    storage = StorageSettings(backend=backend, blob_dir=str(blob_dir(tmp_path, "test", backend)))
    blobs = open_blob_backend(Settings(database=DatabaseSettings(url=database), storage=storage))
    recorder = Recorder("127.0.0.1", 0, name="smarthost.test").start()
    recorder.data_delay = 0.2  # each delivery takes a moment: node-a is caught mid-delivery
    nodes: list[ServerProcess] = []
    metrics_ports: dict[str, int] = {}
    for name in ("node-a", "node-b"):
        config, port, metrics = node_config(tmp_path, name, database, recorder.port, backend)
        log = tmp_path / f"{name}.log"
        nodes.append(ServerProcess.for_config(config, port=port, log=log, name=name))
        metrics_ports[name] = metrics
    node_a, node_b = nodes
    # Round-robin over both nodes; a frozen or dead node is passed over for the other one.
    senders = Senders(
        [node.port for node in nodes],
        INBOUND,
        prefix="multi",
        rcpt_to=[RCPT],
        io_timeout_seconds=5,
        deadline_seconds=DEADLINE_SECONDS,
    )
    try:
        for node in nodes:
            node.start()
        b_before = scrape(metrics_ports["node-b"])
        senders.start(CLIENTS)
        wanted_out = queue_outbound(sessions, blobs)

        # Freeze node-a at a moment it holds claims on both queues, then read them.
        deadline = time.monotonic() + DEADLINE_SECONDS
        held_in: set[int] = set()
        held_out: set[str] = set()
        while time.monotonic() < deadline:
            if senders.acked_count >= INBOUND // 4:
                node_a.signal(signal.SIGSTOP)
                held_in, held_out = claims_of(sessions, "node-a")
                if held_in and held_out:
                    break
                node_a.signal(signal.SIGCONT)
            time.sleep(0.02)
        assert held_in and held_out, "node-a never held claims on both queues"
        node_a.signal(signal.SIGKILL)
        killed_at, killed_clock = utcnow(), time.monotonic()
        node_a.wait(10)

        assert senders.join(DEADLINE_SECONDS), "a sender thread is still running"
        while time.monotonic() < deadline and not all_done(sessions):
            time.sleep(0.2)
        assert all_done(sessions), "work left unfinished after the kill"
        b_after = scrape(metrics_ports["node-b"])
        assert node_b.stop() == 0
    finally:
        for node in nodes:
            node.kill()
        recorder.close()

    # Inbound: nothing acknowledged is lost, every row processed exactly once.
    assert senders.refused == {}
    assert len(senders.acked) == INBOUND
    with sessions() as session:
        rows = session.scalars(select(ReceivedMessage)).all()
        records = Counter(
            session.scalars(select(TraceEntry.message_id).where(TraceEntry.step == "record"))
        )
        last_record = (
            select(TraceEntry.message_id, func.max(TraceEntry.at))
            .where(TraceEntry.step == "record")
            .group_by(TraceEntry.message_id)
        )
        finished_at: dict[int, datetime] = dict(session.execute(last_record).all())
        activities = Counter(session.scalars(select(Activity.message_id)))
        outbound_states = Counter(session.scalars(select(OutboundMessage.state)))
    engine.dispose()
    assert {row.state for row in rows} == {MessageState.PROCESSED}
    assert all(blobs.exists(row.blob) for row in rows)  # every raw message readable from here
    if backend == "database":
        # No blob on any node's disk: node-b's spool ends empty, and node-a's may hold only
        # spool files of DATA its kill cut short (never acknowledged).
        kept = [p for p in tmp_path.glob("node-b-spool/**/*") if p.is_file()]
        assert kept == [], kept
        cut = [p for p in tmp_path.glob("node-a-spool/**/*") if p.is_file()]
        assert all(p.name.startswith(".spool-") for p in cut), cut
    blobs.close()
    assert all(records[row.id] == 1 for row in rows), "a message was processed twice"
    stored_ids = {f"multi-{n}@client.example" for n in range(INBOUND)}
    assert set(activities) == stored_ids  # none lost
    assert all(n == 1 for n in activities.values())  # one activity per email
    # The survivor finished what the dead node had claimed, after it died.
    assert all(finished_at[mid] > killed_at for mid in held_in)

    # Outbound: every row delivered; repeats only where node-a died holding the row.
    assert outbound_states == {OutboundState.DELIVERED: OUTBOUND}
    delivered = recorder.accepted
    seen = Counter(rcpt for t in delivered for rcpt in t.rcpt_tos)
    assert set(seen) == wanted_out
    repeated = {rcpt for rcpt, n in seen.items() if n > 1}
    assert repeated <= held_out, f"delivered twice without a crash to excuse it: {repeated}"
    for rcpt in held_out:
        by_b = [
            t
            for t in delivered
            if rcpt in t.rcpt_tos and t.helo == "node-b.capture.example" and t.at > killed_clock
        ]
        assert by_b, f"{rcpt} held by node-a was not delivered by node-b after the kill"
    # The survivor's metrics moved with the work it took over; node-a did the rest of the
    # processing before it died, so the work was shared, not done by one node.
    processed_by_b = value(b_after, "mailledger_verdicts_total", state="processed") - value(
        b_before, "mailledger_verdicts_total", state="processed"
    )
    assert len(held_in) <= processed_by_b < len(rows)
    delivered_by_b = value(b_after, "mailledger_deliveries_total", state="delivered") - value(
        b_before, "mailledger_deliveries_total", state="delivered"
    )
    assert len(held_out) <= delivered_by_b <= OUTBOUND
    assert value(b_after, "mailledger_delivery_latency_seconds_count") == delivered_by_b
    print(  # shown with -s
        f"node-a held {len(held_in)} received and {len(held_out)} outbound at the kill; "
        f"node-b processed {processed_by_b:.0f}; repeats {len(repeated)}"
    )
