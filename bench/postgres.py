"""The session phases on PostgreSQL, the production store, beside SQLite's.

The database is on a cluster in a temporary directory: the test harness's server
(:mod:`mailledger.testing.postgres`), restarted with the durability the harness turns off
for speed (``fsync``, ``synchronous_commit``, ``full_page_writes``): the bench compares
stores as they run in production, and the SQLite store it stands beside commits with
``synchronous=FULL``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import phase
from bench.servers import full_server, write_full_config
from bench.world import Mail, seed
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.postgres import PostgresServer, find_bindir, running_server
from mailledger.testing.servers import ServerProcess

DATABASE = "mailledger_bench"
NOT_FOUND = "PostgreSQL not found: install postgresql-15 (initdb, pg_ctl) for this phase"
_DURABLE = {
    "-c fsync=off": "-c fsync=on",
    "-c synchronous_commit=off": "-c synchronous_commit=on",
    "-c full_page_writes=off": "-c full_page_writes=on",
}


@dataclass(frozen=True)
class Database:
    """A durable database: its SQLAlchemy URL and the server's main process."""

    url: str
    server: PostgresServer

    @property
    def pid(self) -> int:
        """The postmaster's pid: its process tree holds every backend, whose CPU counts too."""
        return int((self.server.data_dir / "postmaster.pid").read_text().split()[0])


def _check_durable(server: PostgresServer) -> None:
    """Refuse to measure a cluster that would not fsync a commit."""
    with psycopg.connect(
        host="127.0.0.1", port=server.port, user=server.user, dbname="postgres"
    ) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            row = conn.execute(f"SHOW {setting}").fetchone()  # a fixed name, not input
            if row is None or row[0] != "on":
                raise RuntimeError(f"PostgreSQL runs with {setting} = {row}; the bench needs on")


def available() -> bool:
    """Whether PostgreSQL's server programs are installed."""
    return find_bindir() is not None


@contextlib.contextmanager
def durable_database() -> Iterator[Database]:
    """A fresh database on a cluster that fsyncs every commit, for the block's duration."""
    with running_server() as server:
        options = server.options
        for off, on in _DURABLE.items():
            if off not in options:
                raise RuntimeError(f"the PostgreSQL harness no longer starts with {off!r}")
            options = options.replace(off, on)
        server.options = options
        server.halt()
        server.resume()
        _check_durable(server)
        server.create_database(DATABASE)
        yield Database(server.url(DATABASE), server)


def measure(
    work: Path,
    dns: DNSServer,
    bare: ServerProcess,
    batches: list[tuple[int, list[Mail]]],
    *,
    tls: tuple[Path, Path],
    mx_port: int,
) -> dict[str, Any] | None:
    """The session phases again, on a second full server whose store is PostgreSQL.

    ``batches`` are (sessions, messages): the same messages the SQLite server got, each batch
    sent to ``bare`` first and then to this server, side by side as for SQLite. The server's
    CPU includes PostgreSQL's processes. None, after saying why, without PostgreSQL.
    """
    if not available():
        print(NOT_FOUND, flush=True)
        return None
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    with durable_database() as database:
        # A second acme.example s1 key is published beside the SQLite server's; only the
        # relay phase, which has run already, signs with it.
        db = seed(database.url, work / "secret.key", dns)
        ports = {
            "capture": free_port(),
            "submission": free_port(),
            "metrics": free_port(),
            "mx": mx_port,
        }
        config = write_full_config(work, dns, ports, *tls, database_url=database.url)
        rows = []
        with full_server(config, ports["capture"], work / "server.log") as full:
            for sessions, mails in batches:
                ref = phase.measure(bare.port, bare.pid, mails, sessions, None)
                got = phase.measure(
                    ports["capture"], full.pid, mails, sessions, db, db_pid=database.pid
                )
                rows.append({"bare": ref, "full": got})
                print(
                    f"  {sessions:>2} sessions on PostgreSQL: bare {ref['msgs_per_s']}/s, "
                    f"full {got['msgs_per_s']}/s (intake {got['intake_msgs_per_s']}/s) "
                    f"{got['states']}",
                    flush=True,
                )
        engine = db.kw["bind"]
        engine.dispose()
    return {
        "postgresql": database.server.bindir.parent.name,
        "sessions": rows,
        "seconds": round(time.monotonic() - started, 1),
    }
