"""Processing alone on a stored backlog of synced mail: how it scales with processes.

``python -m bench.sync_drain [--messages N] [--processes 1,2,3]`` fetches a Dovecot mailbox of
N messages of ~10 KB into a fresh SQLite database (``sync.passes``, nothing else running),
holds the fetched messages back, starts P processing processes (``[processing]
worker_processes``, as ``serve`` runs them) and lets them settle, then releases the whole
backlog at once and times them until every message is recorded. It does this for each P,
each time into a fresh database.

Printed for each P: messages/s, the processes' CPU per message, and how busy each process
was (CPU over wall time). One process is bound by the CPU; more share SQLite's one write
lock, so they are busy less of the time: what the rate gains from a second process is what
the write transactions leave over.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bench.sync_backfill import (
    PASSWORD,
    POLL_SECONDS,
    USER,
    _message,
    _Processing,
    _unfinished,
    fresh_store,
)
from mailledger.store.models import MessageState, ReceivedMessage
from mailledger.testing.dovecot import Dovecot
from mailledger.testing.syncing import activity_count, syncer

DEFAULT_MESSAGES = 3000
FINISH_SECONDS = 1800.0


def _drain(server: Dovecot, work: Path, processes: int, messages: int) -> dict[str, Any]:
    """One backlog fetched into a fresh database, then recorded by ``processes`` processes."""
    store = fresh_store(server, work, processes)
    settings, sessions = store.settings, store.sessions
    result = syncer(sessions, store.blobs, settings, server).run(store.account)
    if result.problem is not None:
        raise RuntimeError(f"the backfill failed: {result.problem}")
    # Held back while the processes start and import, then released in one statement.
    with sessions.begin() as session:
        session.execute(update(ReceivedMessage).values(state=MessageState.FAILED))
    processing = _Processing(settings, processes)
    try:
        with sessions.begin() as session:
            session.execute(update(ReceivedMessage).values(state=MessageState.RECEIVED))
        cpu_before = processing.cpu_seconds()
        started = time.perf_counter()
        processing.pool.wake()
        deadline = time.monotonic() + FINISH_SECONDS
        while _unfinished(sessions) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - started
        cpu = processing.cpu_seconds() - cpu_before
    finally:
        processing.stop()
    recorded = activity_count(sessions)
    store.engine.dispose()
    return {
        "processes": processes,
        "msgs_per_s": round(messages / wall, 1),
        "cpu_ms_per_msg": round(cpu * 1000 / messages, 3),
        "busy_percent": round(cpu / wall / processes * 100),
        "activities": recorded,
    }


def measure(work: Path, messages: int, counts: list[int]) -> list[dict[str, Any]]:
    """One drain for each process count, from one Dovecot mailbox."""
    with Dovecot() as server:
        server.add_user(USER, PASSWORD)
        server.append_many(USER, "INBOX", (_message(n) for n in range(messages)))
        return [
            _drain(server, work / f"drain-{index}-{count}", count, messages)
            for index, count in enumerate(counts)
        ]


def main() -> int:
    """Run the measurement and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.sync_drain")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES)
    parser.add_argument(
        "--processes", default="1,2", help="process counts to try, comma-separated (1,2)"
    )
    args = parser.parse_args()
    counts = [int(part) for part in args.processes.split(",") if part.strip()]
    with tempfile.TemporaryDirectory(prefix="mailledger-sync-drain-") as tmp:
        rows = measure(Path(tmp), args.messages, counts)
    print(f"recording a stored backlog of {args.messages} synced messages of ~10 KB:")
    for row in rows:
        print(
            f"  {row['processes']} processing process(es): {row['msgs_per_s']} msgs/s, "
            f"{row['cpu_ms_per_msg']} ms CPU/msg, each busy {row['busy_percent']} % of the "
            f"time ({row['activities']} activities)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
