"""Intake's engine takes SQLite's write lock by polling, gives up at the busy timeout, and
says while it waits (``store.lockwaits``)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from mailledger.store import engine as engine_module
from mailledger.store.engine import make_engine
from mailledger.store.lockwaits import SUFFIX, LockWaits, lock_waits


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


@pytest.mark.parametrize("announce", [True, False])
def test_a_server_writer_says_it_waits_and_others_do_not(db: Path, announce: bool) -> None:
    """Each failed try of an announcing engine is noted for processing to see; no other's."""
    waits = lock_waits(f"sqlite:///{db}")
    assert waits is not None
    before = time.monotonic()
    held = threading.Event()
    thread = _hold_lock(db, 0.3, held)
    held.wait(5)
    poller = make_engine(f"sqlite:///{db}", lock_poll_seconds=0.001, announce_waits=announce)
    with poller.begin() as conn:  # waits out the holder's 0.3 s
        conn.execute(text("INSERT INTO t VALUES (2)"))
    thread.join()
    poller.dispose()
    assert waits.since(before) is announce


def test_the_note_is_shared_by_every_process(db: Path) -> None:
    """A note made in another process (as intake's are) is seen here."""
    waits = lock_waits(f"sqlite:///{db}")
    assert waits is not None
    before = time.monotonic()
    assert not waits.since(before)
    code = (
        "import sys; from mailledger.store.lockwaits import lock_waits; "
        "lock_waits(sys.argv[1]).note()"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True)
    assert waits.since(before)
    assert not waits.since(time.monotonic())
    assert (db.parent / f"{db.name}{SUFFIX}").stat().st_mode & 0o777 == 0o600


def test_no_note_without_a_database_file() -> None:
    """PostgreSQL's writers wait only for the rows they touch; memory has no file to share."""
    assert lock_waits("sqlite://") is None
    assert lock_waits("sqlite:///:memory:") is None
    assert lock_waits("postgresql+psycopg://u@127.0.0.1/db") is None


def _note_until(waits: LockWaits, stop: threading.Event) -> threading.Thread:
    """A server writer that keeps finding the lock taken (as intake does every millisecond)."""

    def keep_noting() -> None:
        while not stop.is_set():
            waits.note()
            time.sleep(0.0005)

    thread = threading.Thread(target=keep_noting)
    thread.start()
    return thread


def _begin_in_thread(engine: Engine, began: threading.Event) -> threading.Thread:
    def begin() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (4)"))
            began.set()

    thread = threading.Thread(target=begin)
    thread.start()
    return thread


def test_processing_stands_back_while_a_server_writer_waits(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A yielding engine does not take even a free lock while a server writer is waiting;
    it takes it once the waiting is over."""
    monkeypatch.setattr(engine_module, "MAX_YIELD_SECONDS", 30.0)
    # A note counts as a wait for longer than the noting thread can go unscheduled on a loaded
    # machine (2 ms by default, which a busy test run sometimes missed).
    monkeypatch.setattr(engine_module, "STILL_WAITING_SECONDS", 0.5)
    waits = lock_waits(f"sqlite:///{db}")
    assert waits is not None
    stop, began = threading.Event(), threading.Event()
    noting = _note_until(waits, stop)
    processing = make_engine(f"sqlite:///{db}", lock_poll_seconds=0.002, yield_to_waits=True)
    try:
        writer = _begin_in_thread(processing, began)
        assert not began.wait(0.3)  # the lock is free, but a server writer is waiting
        stop.set()
        noting.join()
        assert began.wait(10)
        writer.join()
    finally:
        stop.set()
        processing.dispose()


def test_processing_stands_back_for_a_while_only(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that keeps noting cannot keep processing out for longer than its yield."""
    monkeypatch.setattr(engine_module, "MAX_YIELD_SECONDS", 0.05)
    waits = lock_waits(f"sqlite:///{db}")
    assert waits is not None
    stop, began = threading.Event(), threading.Event()
    noting = _note_until(waits, stop)
    processing = make_engine(f"sqlite:///{db}", lock_poll_seconds=0.002, yield_to_waits=True)
    try:
        writer = _begin_in_thread(processing, began)
        assert began.wait(10)
        assert not stop.is_set()
        writer.join()
    finally:
        stop.set()
        noting.join()
        processing.dispose()


def test_a_writer_announces_or_yields_not_both(db: Path) -> None:
    with pytest.raises(ValueError, match="either"):
        make_engine(
            f"sqlite:///{db}", lock_poll_seconds=0.001, announce_waits=True, yield_to_waits=True
        )
