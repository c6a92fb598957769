"""Intake's engine takes SQLite's write lock by polling, and gives up at the busy timeout."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mailledger.store import engine as engine_module
from mailledger.store.engine import make_engine


def _hold_lock(path: Path, seconds: float, held: threading.Event) -> threading.Thread:
    holder = make_engine(f"sqlite:///{path}")

    def hold() -> None:
        with holder.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
            held.set()
            threading.Event().wait(seconds)
        holder.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "lock.db"
    setup = make_engine(f"sqlite:///{path}")
    with setup.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    setup.dispose()
    return path


def test_waits_for_the_lock_and_then_writes(db: Path) -> None:
    held = threading.Event()
    thread = _hold_lock(db, 0.3, held)
    held.wait(5)
    poller = make_engine(f"sqlite:///{db}", lock_poll_seconds=0.001)
    with poller.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (2)"))
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == engine_module.BUSY_TIMEOUT_MS
    thread.join()
    with poller.connect() as conn:
        assert sorted(conn.execute(text("SELECT x FROM t")).scalars()) == [1, 2]
    poller.dispose()


def test_gives_up_at_the_busy_timeout(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 200)
    held = threading.Event()
    thread = _hold_lock(db, 1.5, held)
    held.wait(5)
    poller = make_engine(f"sqlite:///{db}", lock_poll_seconds=0.001)
    with pytest.raises(OperationalError, match="locked"), poller.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (3)"))
    thread.join()
    poller.dispose()
