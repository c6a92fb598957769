"""The two servers the bench measures, as every bench command runs them.

The full server (``python -m mailledger.service.server``) gets the configuration of the
benchmark's world: capture and submission listeners, the world's DNS server, the recording
MX, processing in worker processes. The bare reference is ``python -m bench.bare``. Both are
:class:`~mailledger.testing.servers.ServerProcess`: started, waited for, stopped the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.world import HOSTNAME
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.servers import ServerProcess, write_config

# Processing processes beside the listener's, one per core: they run nicer than the listener
# ([processing] worker_nice), so they take the CPU the listener leaves, not the listener's.
WORKER_PROCESSES = os.cpu_count() or 2
# The full server starts worker processes and opens its database before it listens.
READY_TIMEOUT_SECONDS = 60.0


def write_full_config(
    work: Path, dns: DNSServer, ports: dict[str, int], cert: Path, key: Path
) -> Path:
    """The full server's configuration, written in ``work``.

    ``ports`` has the capture, submission and metrics listeners' ports and the MX's.
    """
    return write_config(
        work / "mailledger.toml",
        database_url=f"sqlite:///{work / 'mailledger.db'}",
        blob_dir=work / "blobs",
        capture_port=ports["capture"],
        submission={"listen": [f"127.0.0.1:{ports['submission']}"], "listen_tls": []},
        tls={"cert_file": cert, "key_file": key},
        dns={"nameservers": [dns.address], "timeout_seconds": 2.0},
        relay={"smtp_port": ports["mx"], "dkim_key_dir": work / "dkim"},
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
