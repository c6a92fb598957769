"""The two servers the bench measures, as every bench command runs them.

The full server (``python -m mailledger.service.server``) gets the configuration of the
benchmark's world: capture and submission listeners, the world's DNS server, the recording
MX, processing in worker processes. The bare reference is ``python -m bench.bare``. Both are
:class:`~mailledger.testing.servers.ServerProcess`: started, waited for, stopped the same way.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from bench.world import HOSTNAME, MX_IP, Keys, publish, seed
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.ports import free_port
from mailledger.testing.recorder import Recorder, start_recorders
from mailledger.testing.servers import ServerProcess, write_config
from mailledger.testing.tls import write_self_signed

# Processing processes beside the listener's, one per core: they run nicer than the listener
# ([processing] worker_nice), so they take the CPU the listener leaves, not the listener's.
WORKER_PROCESSES = os.cpu_count() or 2
# The full server starts worker processes and opens its database before it listens.
READY_TIMEOUT_SECONDS = 60.0


def write_full_config(
    work: Path,
    dns: DNSServer,
    ports: dict[str, int],
    cert: Path,
    key: Path,
    *,
    database_url: str | None = None,
) -> Path:
    """The full server's configuration, written in ``work``.

    ``ports`` has the capture, submission and metrics listeners' ports and the MX's. The
    database is an SQLite file in ``work`` unless ``database_url`` names another (PostgreSQL);
    nothing else differs between the two.
    """
    return write_config(
        work / "mailledger.toml",
        database_url=database_url or f"sqlite:///{work / 'mailledger.db'}",
        blob_dir=work / "blobs",
        capture_port=ports["capture"],
        submission={"listen": [f"127.0.0.1:{ports['submission']}"], "listen_tls": []},
        tls={"cert_file": cert, "key_file": key},
        dns={"nameservers": [dns.address], "timeout_seconds": 2.0},
        relay={"smtp_port": ports["mx"]},
        secrets={"key_file": work / "secret.key"},
        service={"hostname": HOSTNAME, "node_id": "bench"},
        processing={
            # The bench sends thousands of forwards from one Gmail sender in a few minutes; the
            # loop guard (50 in ten minutes) would hold them as a mail loop, which is its job
            # but not what we measure.
            "loop_threshold": 1000000,
            # Processing beside the listener, on every core at a lower priority (DESIGN §9).
            "worker_processes": WORKER_PROCESSES,
        },
        metrics={"listen": f"127.0.0.1:{ports['metrics']}"},
        logging={"level": "info"},
    )


def full_server(config: Path, port: int, log: Path) -> ServerProcess:
    """The whole server with ``config``; ready when its capture ``port`` answers."""
    return ServerProcess.for_config(
        config, port=port, log=log, name="full server", ready_timeout_seconds=READY_TIMEOUT_SECONDS
    )


def bare_server(port: int, log: Path) -> ServerProcess:
    """The bare aiosmtpd reference (``bench.bare``) on ``port``."""
    return ServerProcess(
        [sys.executable, "-m", "bench.bare", str(port)],
        port=port,
        log=log,
        name="bare server",
        ready_timeout_seconds=READY_TIMEOUT_SECONDS,
    )


@dataclass(frozen=True, slots=True)
class World:
    """What a bench run sets up before any server starts: ports, the MX, the database."""

    ports: dict[str, int]  # capture, submission, mx, metrics, bare
    recorders: list[Recorder]  # the recording MX relayed mail goes to
    db: sessionmaker[Session]  # the full server's SQLite database, seeded
    config: Path  # the full server's configuration
    cert: Path
    key: Path


def set_up_world(work: Path, dns: DNSServer, keys: Keys) -> World:
    """The bench's world in ``work``: DNS records published, a recording MX, free ports, a
    self-signed certificate, the seeded database and the full server's configuration."""
    publish(dns, keys)
    mx_port, recorders = start_recorders([MX_IP])
    ports = {
        "capture": free_port(),
        "submission": free_port(),
        "mx": mx_port,
        "metrics": free_port(),
        "bare": free_port(),
    }
    cert, key = write_self_signed(HOSTNAME, work / "tls")
    db = seed(f"sqlite:///{work / 'mailledger.db'}", work / "secret.key", dns)
    config = write_full_config(work, dns, ports, cert, key)
    return World(ports, recorders, db, config, cert, key)
