"""Database engines and sessions: SQLite tuned for durability, PostgreSQL by URL."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.lockwaits import LockWaits, lock_waits


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes a commit durable before we
    # answer 250 (DESIGN §9). busy_timeout waits out another process's write instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(dbapi_connection: Any) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take it over.
    dbapi_connection.isolation_level = None


BUSY_TIMEOUT_MS = 30000


# A server writer waiting for the lock tries at least this often (intake: every 1 ms), so a
# failed try noted this recently means it is still waiting.
STILL_WAITING_SECONDS = 0.002
# The longest a yielding writer (processing) stands back for the server's, per transaction.
MAX_YIELD_SECONDS = 0.1


def poll_write_lock(
    dbapi_connection: Any,
    *,
    first_wait: float,
    longest_wait: float,
    timeout: float,
    stand_back: Callable[[float, float], bool] | None = None,
    on_busy: Callable[[], None] | None = None,
) -> None:
    """``BEGIN IMMEDIATE`` on a driver connection, trying again after ``first_wait``, then
    twice as long each time up to ``longest_wait``, for at most ``timeout`` seconds.

    SQLite's busy handler sleeps 1, 2, 5 … 100 ms between tries, so a writer that arrives
    just after another took the lock waits far longer than the other holds it. Trying every
    fraction of a millisecond takes the lock within a try of its release. ``stand_back(
    started, now)``: while it says so, do not try at all; ``on_busy``: called after each try
    that found the lock taken. Raises ``sqlite3.OperationalError`` when the lock stays taken
    past the timeout, or for any other failure of the ``BEGIN``.
    """
    started = time.monotonic()
    deadline = started + timeout
    delay = first_wait
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        while True:
            if stand_back is None or not stand_back(started, time.monotonic()):
                try:
                    cursor.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                if on_busy is not None:
                    on_busy()
            time.sleep(delay)
            delay = min(delay * 2, longest_wait)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()


def _begin_immediate(
    dbapi_connection: Any,
    poll_seconds: float,
    waits: LockWaits | None = None,
    *,
    announce: bool = True,
) -> None:
    """Take SQLite's write lock by trying often (``poll_write_lock``), every ``poll_seconds``
    at most.

    That busy handler's waits let intake's 250 wait up to 0.7 s behind processing
    transactions of 10 ms (`make bench`). With ``waits`` (``store.lockwaits``): a writer that
    ``announce``s notes each try that fails, so a processing transaction holding the lock
    ends soon; one that does not (processing) stands back while one that does is waiting, so
    the lock a processing transaction gives up goes to intake, not to the next processing
    transaction.
    """

    def yielding(started: float, now: float) -> bool:
        assert waits is not None
        return now - started < MAX_YIELD_SECONDS and waits.since(now - STILL_WAITING_SECONDS)

    try:
        poll_write_lock(
            dbapi_connection,
            first_wait=poll_seconds / 8,
            longest_wait=poll_seconds,
            timeout=BUSY_TIMEOUT_MS / 1000,
            stand_back=yielding if waits is not None and not announce else None,
            on_busy=waits.note if waits is not None and announce else None,
        )
    except sqlite3.OperationalError as exc:
        # As SQLAlchemy would have raised it: callers handle storage faults so.
        raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc


def make_engine(
    url: str,
    *,
    echo: bool = False,
    lock_poll_seconds: float | None = None,
    announce_waits: bool = False,
    yield_to_waits: bool = False,
) -> Engine:
    """An engine for the configured URL; creates the directory of an SQLite file.

    ``lock_poll_seconds``: on SQLite, wait for the write lock by trying at most this far
    apart (for writers whose latency matters, such as intake) instead of SQLite's backoff.
    ``announce_waits`` (with it): say so while waiting, so processing's transaction makes way
    (``store.lockwaits``); the server's writers do. ``yield_to_waits`` (processing's): stand
    back while one of those waits.
    """
    if announce_waits and yield_to_waits:
        raise ValueError("a writer either announces its waits or yields to others'")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        waits = lock_waits(url) if announce_waits or yield_to_waits else None
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "connect", lambda conn, _rec: _sqlite_begin(conn))

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                # A reader must not hold the write lock (see reading below).
                conn.exec_driver_sql("BEGIN DEFERRED")
                return
            # IMMEDIATE takes the write lock at the start, so two writers never deadlock on
            # an upgrade from a read lock.
            if lock_poll_seconds is None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                _begin_immediate(
                    conn.connection.dbapi_connection,
                    lock_poll_seconds,
                    waits,
                    announce=announce_waits,
                )

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


READ_ONLY = "mailledger_read_only"


@contextlib.contextmanager
def reading(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session that only reads: on SQLite it takes no write lock.

    Lookups on busy paths (RCPT routing, AUTH, health, metrics, idle polls) and work that may
    wait on the network (DNS checks) read this way and write, if at all, in a short
    transaction afterwards, so intake's group commits never queue behind them.
    """
    with sessions() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session


def finds_any(sessions: sessionmaker[Session], statement: Select[Any]) -> bool:
    """Whether ``statement`` finds a row, asked as a reader.

    Periodic passes look first this way: a pass that takes the write transaction and finds
    nothing would still hold SQLite's write lock while intake waits.
    """
    with reading(sessions) as session:
        return session.execute(statement.limit(1)).first() is not None


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (we hand them to the CLI)."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    """Whether row locks with SKIP LOCKED are available for claiming work."""
    return engine.dialect.name == "postgresql"
