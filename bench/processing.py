"""The processing worker alone: stored messages recorded as activities, CPU and statements.

``python -m bench.processing [--messages N] [--batch-size B] [--hold-seconds S]`` stores N
messages of about 10 KB for a user capture address (one in five with a 20 KB PDF, one in ten
arriving twice, so a tenth are merges), then lets the capture worker claim and record them
all on SQLite. Sender checks are left out (loopback is trusted, as in the demo), so what is
measured is parsing, the pipeline's steps and the write transactions. Printed: CPU and wall
ms per message, statements per message, and how long each write transaction held the
database. ``--batch-size 1`` records one message per transaction, as processing did before
it recorded batches.

Statements are counted as the driver receives them, whether through SQLAlchemy or straight
on its cursor (``store.precompiled``): each ``execute`` and ``executemany``, so ``BEGIN`` and
``SAVEPOINT`` count and an ``executemany`` of many rows counts once, as SQLAlchemy's
``before_cursor_execute`` event counted them before processing used the cursor itself.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from sqlalchemy import event, func, select

from mailledger.capture.worker import Worker
from mailledger.cli.demo import seed_demo
from mailledger.config import load_settings
from mailledger.logs import configure_logging
from mailledger.store.blobbackend import open_blob_backend
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Activity, ActivitySource, Base, ReceivedMessage
from mailledger.testing.mail import make_email, store_received

RICHARD = "richard@acme.capture.example"
LINE = "Line of the order details, quantities and delivery dates.\r\n"


class _Counted:
    """How many statements the driver was given while ``on``."""

    on = False
    statements = 0


class _CountingCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> Self:
        _Counted.statements += _Counted.on
        super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, parameters: Any, /) -> Self:
        _Counted.statements += _Counted.on
        super().executemany(sql, parameters)
        return self


class _CountingConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _CountingCursor) -> Any:
        return super().cursor(factory)


def _counting(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
    kwargs["factory"] = _CountingConnection


def measure(work: Path, messages: int, batch_size: int, hold_seconds: float) -> dict[str, Any]:
    """Store ``messages`` messages, record them all, and return the figures."""
    database = f"sqlite:///{work / 'processing.db'}"
    env = {
        "MAILLEDGER_DATABASE__URL": database,
        "MAILLEDGER_STORAGE__BLOB_DIR": str(work / "blobs"),
        "MAILLEDGER_DNS__NAMESERVERS": '["127.0.0.1:9"]',
        "MAILLEDGER_LOGGING__LEVEL": '"error"',
        "MAILLEDGER_VERIFY__DEMO_TRUST_LOOPBACK": "true",
        "MAILLEDGER_PROCESSING__LOOP_THRESHOLD": "1000000",
        "MAILLEDGER_PROCESSING__BATCH_SIZE": str(batch_size),
        "MAILLEDGER_PROCESSING__TRANSACTION_HOLD_SECONDS": str(hold_seconds),
    }
    settings = load_settings(None, env)
    configure_logging(settings.logging)
    engine = make_engine(database)
    event.listen(engine, "do_connect", _counting)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    blobs = open_blob_backend(settings)
    with sessions.begin() as session:
        seed_demo(session)
    body = LINE * (10 * 1024 // len(LINE))
    for n in range(messages):
        pdf = [("quote.pdf", "application/pdf", os.urandom(20_000))] if n % 5 == 0 else None
        raw = make_email(
            subject=f"Order {n}", message_id=f"order-{n}@client.example", body=body, attachments=pdf
        )
        for _ in range(2 if n % 10 == 3 else 1):
            store_received(sessions, blobs, raw, [RICHARD])
    with sessions() as session:
        stored = int(session.scalar(select(func.count(ReceivedMessage.id))) or 0)
    holds: list[float] = []
    began: dict[int, float] = {}

    def begin(connection: Any) -> None:
        began[id(connection)] = time.perf_counter()

    def commit(connection: Any) -> None:
        started = began.pop(id(connection), None)
        if started is not None:
            holds.append(time.perf_counter() - started)

    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", commit)
    worker = Worker(sessions, blobs, settings)
    _Counted.on, _Counted.statements = True, 0
    cpu, wall = time.process_time(), time.perf_counter()
    while ids := worker.claim_batch():
        worker.process_batch(ids)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    _Counted.on = False
    with sessions() as session:
        activities = session.scalar(select(func.count(Activity.id)))
        sources = session.scalar(select(func.count(ActivitySource.id)))
    engine.dispose()
    holds.sort()
    return {
        "messages": stored,
        "activities": activities,
        "sources": sources,
        "cpu_ms_per_msg": round(cpu * 1000 / stored, 2),
        "wall_ms_per_msg": round(wall * 1000 / stored, 2),
        "msgs_per_s": round(stored / wall, 1),
        "statements_per_msg": round(_Counted.statements / stored, 1),
        "write_transactions": len(holds),
        "hold_ms_p50": round(holds[len(holds) // 2] * 1000, 2) if holds else None,
        "hold_ms_max": round(holds[-1] * 1000, 2) if holds else None,
    }


def main() -> int:
    """Run the measurement and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.processing")
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hold-seconds", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailledger-processing-bench-") as tmp:
        out = measure(Path(tmp), args.messages, args.batch_size, args.hold_seconds)
    print(
        f"{out['messages']} messages → {out['activities']} activities, {out['sources']} sources "
        f"(batch size {args.batch_size}, hold {args.hold_seconds:g} s)\n"
        f"  {out['cpu_ms_per_msg']} ms CPU and {out['wall_ms_per_msg']} ms wall per message "
        f"({out['msgs_per_s']} msg/s), {out['statements_per_msg']} statements per message\n"
        f"  {out['write_transactions']} write transactions, held p50 {out['hold_ms_p50']} ms, "
        f"max {out['hold_ms_max']} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
