"""Every 250 comes after its message's name is durable: the order, as the kernel saw it.

The real server runs under ``strace -f`` and takes 20 messages one after another (some small
enough to stay in memory, some large enough to be spooled to disk as they arrive). For each
``250 … Queued as ID`` written to a client, the trace must show, in this order:

- a large message's blob (a file): its bytes fsynced, its rename to its digest, an fsync of
  the directory it was renamed into (and of the store's root once its fan-out directory was
  made in this run, by any writer), the database commit's fsync, and only then the reply;
- a small message's blob (a row of the small-blob file): the fsync of that file's write-ahead
  log by the intake writer, after the previous reply, then that writer's database commit's
  fsync, and only then the reply (DESIGN §3, §9).
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailledger.cli.demo import seed_demo
from mailledger.store.blobpack import PACK_NAME
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, ReceivedMessage
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.mail import make_email
from mailledger.testing.ports import free_port
from mailledger.testing.servers import ServerProcess, server_argv, write_config
from mailledger.testing.syscalls import Call, parse_trace, strace_argv, strace_unavailable

pytestmark = pytest.mark.slow

MESSAGES = 20
SPOOLED_EVERY = 5  # every fifth message is larger than the in-memory limit: spooled to disk
SPOOLED_BODY_LINES = 20_000  # ~1.4 MB, past smtp.spool.SPOOL_BYTES
QUEUED = re.compile(r"^250 2\.0\.0 Queued as ([0-9A-F]+)")
SYNCS = ("fsync", "fdatasync")
DATABASE_FILES = ("durable.db", "durable.db-wal", "durable.db-journal")


class TracedServer:
    """The server process under strace; ``stop`` ends the server so strace writes its last."""

    def __init__(self, process: ServerProcess, trace: Path) -> None:
        self.process = process
        self.trace = trace

    def stop(self) -> None:
        """SIGTERM the server (to strace it would mean detach, leaving the server running)."""
        if not self.process.running:
            return
        traced = _children(self.process.pid)
        for pid in traced:
            os.kill(pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            for pid in traced:
                os.kill(pid, signal.SIGKILL)
            self.process.kill()


@pytest.fixture
def traced_server(tmp_path: Path, dns_server: DNSServer) -> Iterator[TracedServer]:
    """The server under ``strace -f``, stopped at the end whatever happened."""
    reason = strace_unavailable()
    if reason is not None:
        pytest.skip(reason)
    port = free_port()
    config = write_config(
        tmp_path / "mailledger.toml",
        database_url=f"sqlite:///{tmp_path / 'durable.db'}",
        blob_dir=tmp_path / "blobs",
        capture_port=port,
        dns={"nameservers": [dns_server.address], "timeout_seconds": 2},
        # Processing runs beside intake and stores stamped copies in the same fan-out
        # directories: another writer, as in production.
        logging={"level": "warning"},
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'durable.db'}")
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine).begin() as session:
        seed_demo(session)
    engine.dispose()
    trace = tmp_path / "strace.out"
    server = ServerProcess(
        strace_argv(trace, server_argv(config)),
        port=port,
        log=tmp_path / "server.log",
        ready_timeout_seconds=60,
    )
    server.start()
    traced = TracedServer(server, trace)
    try:
        yield traced
    finally:
        traced.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


def _message(number: int) -> bytes:
    body = f"Message {number}.\r\n"
    if number % SPOOLED_EVERY == SPOOLED_EVERY - 1:
        body += "".join(f"line {n} of a long message\r\n" for n in range(SPOOLED_BODY_LINES))
    return make_email(
        subject=f"Durable {number}", body=body, message_id=f"d{number}@client.example"
    )


def _before(first: Call, then: Call) -> bool:
    """``first`` returned before ``then`` began (strace reports in causal order)."""
    return first.ok and first.end < then.start


def test_every_250_follows_the_fsyncs_and_the_commit(
    tmp_path: Path, traced_server: TracedServer
) -> None:
    """For each of 20 messages: fsync file, rename, fsync directory, commit, then 250."""
    port = traced_server.process.port
    queue_ids = []
    for number in range(MESSAGES):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            client.ehlo("client.example")
            client.mail("carol@client.example")
            client.rcpt("richard@acme.capture.example")
            code, reply = client.data(_message(number))
            assert code == 250, reply
            queue_ids.append(reply.decode().split()[-1])
    traced_server.stop()

    engine = make_engine(f"sqlite:///{tmp_path / 'durable.db'}")
    with make_sessionmaker(engine)() as session:
        rows = session.execute(select(ReceivedMessage.queue_id, ReceivedMessage.blob))
        # Not dict(rows): a Result has keys(), so dict() would read it as a mapping.
        blob_of = {queue_id: blob for queue_id, blob in rows}  # noqa: C416
    engine.dispose()
    calls = parse_trace(traced_server.trace.read_text(encoding="utf-8", errors="replace"))
    root = str(tmp_path / "blobs")

    replies = {}
    for call in calls:
        if call.name in ("write", "sendto") and call.fd_path.startswith("socket:"):
            for text in call.strings:
                if (match := QUEUED.match(text)) is not None:
                    replies[match.group(1)] = call
    assert sorted(replies) == sorted(queue_ids)

    with sqlite3.connect(f"{root}/{PACK_NAME}") as pack:
        packed = {row[0] for row in pack.execute("SELECT hash FROM blobs")}
    # Both ways of storing are on trial: the small messages packed, the spooled ones files.
    assert 0 < sum(blob_of[q] in packed for q in queue_ids) < len(queue_ids)

    for number, queue_id in enumerate(queue_ids):
        reply = replies[queue_id]
        digest = blob_of[queue_id]
        if digest in packed:
            previous = replies[queue_ids[number - 1]] if number else None
            _check_packed(queue_id, calls, reply, previous)
            continue
        directory = f"{root}/{digest[:2]}"
        renames = [
            c
            for c in calls
            if c.name.startswith("rename") and c.strings[-1:] == [f"{directory}/{digest}"]
        ]
        assert renames, f"{queue_id}: no rename of its blob {digest}"
        rename = renames[0]
        assert _before(rename, reply), f"{queue_id}: 250 before its blob was renamed into place"
        source = rename.strings[0]
        assert any(c.name in SYNCS and c.fd_path == source and _before(c, rename) for c in calls), (
            f"{queue_id}: blob renamed before its bytes were fsynced"
        )
        dir_syncs = [
            c
            for c in calls
            if c.name in SYNCS
            and c.fd_path == directory
            and _before(rename, c)
            and _before(c, reply)
        ]
        assert dir_syncs, f"{queue_id}: 250 before the fsync of {directory} after the rename"
        made = [c for c in calls if c.name.startswith("mkdir") and c.ok and directory in c.strings]
        for mkdir in made:
            assert _before(mkdir, reply)
            assert any(
                c.name in SYNCS and c.fd_path == root and _before(mkdir, c) and _before(c, reply)
                for c in calls
            ), f"{queue_id}: 250 before the root was fsynced after {directory} was made"
        assert any(
            c.name in SYNCS
            and Path(c.fd_path).name in DATABASE_FILES
            and _before(dir_syncs[0], c)
            and _before(c, reply)
            for c in calls
        ), f"{queue_id}: 250 before a database commit after its directory fsync"


def _check_packed(queue_id: str, calls: list[Call], reply: Call, previous: Call | None) -> None:
    """A packed blob's 250: after the previous reply (the client sends one message at a time),
    a thread fsyncs the small-blob file's log, then commits the database, then the reply."""

    def since_previous(call: Call) -> bool:
        return previous is None or _before(previous, call)

    commits = [
        c
        for c in calls
        if c.name in SYNCS
        and Path(c.fd_path).name in DATABASE_FILES
        and since_previous(c)
        and _before(c, reply)
    ]
    assert commits, f"{queue_id}: 250 before a database commit"
    assert any(
        p.name in SYNCS
        and Path(p.fd_path).name == PACK_NAME + "-wal"
        and p.pid == commit.pid
        and since_previous(p)
        and _before(p, commit)
        for commit in commits
        for p in calls
    ), f"{queue_id}: 250 before the small-blob log's fsync and then the database commit"
