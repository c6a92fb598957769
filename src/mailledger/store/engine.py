"""Database engines and sessions: SQLite tuned for durability, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; synchronous=FULL makes a commit durable before we
    # answer 250 (DESIGN §9). busy_timeout waits out another process's write instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(dbapi_connection: Any) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take it over.
    dbapi_connection.isolation_level = None


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for the configured URL; creates the directory of an SQLite file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "connect", lambda conn, _rec: _sqlite_begin(conn))

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                # A reader must not hold the write lock (see read_only below).
                conn.exec_driver_sql("BEGIN DEFERRED")
                return
            # IMMEDIATE takes the write lock at the start, so two writers never deadlock on
            # an upgrade from a read lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


READ_ONLY = "mailledger_read_only"


def read_only(session: Session) -> Session:
    """Mark a fresh session as a reader: on SQLite it then takes no write lock.

    Call before the session's first query. Work that may wait on the network (DNS checks)
    reads what it needs this way and writes in a short transaction afterwards, so intake's
    group commits never queue behind it.
    """
    session.connection(execution_options={READ_ONLY: True})
    return session


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (we hand them to the CLI)."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: Engine) -> bool:
    """Whether row locks with SKIP LOCKED are available for claiming work."""
    return engine.dialect.name == "postgresql"
