"""Whether a writer that answers a client is waiting for SQLite's write lock.

SQLite has one writer at a time. Processing records a claimed batch in one transaction, so
its messages share one commit (one fsync) and its fixed costs: the longer the transaction,
the cheaper each message (`python -m bench.sync_drain`). But while it holds the lock,
intake's commit, and so a client's ``250``, waits. So the server's writers (intake, the API,
the sync pass; ``make_engine(announce_waits=True)``) note here the time of each try for the
lock that failed, and a recording transaction ends early only when one tried since it began
(``capture.worker``): a backlog with nobody waiting is recorded in long transactions, and
mail arriving over SMTP still waits no longer than ``[processing] transaction_hold_seconds``.

The note is a time on the system's monotonic clock (the same in every process) in a file of
eight bytes beside the database, mapped into memory by every process that uses it, so a
note and a look are a memory write and a memory read. A torn or lost note can only end one
transaction early or late; nothing is recorded differently.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from pathlib import Path

from sqlalchemy.engine import make_url

_SLOT = struct.Struct("=d")
SUFFIX = "-lockwaits"  # beside SQLite's own -wal and -shm


class LockWaits:
    """The shared note of the last failed try for the write lock of one SQLite database."""

    def __init__(self, path: Path) -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < _SLOT.size:
                os.ftruncate(descriptor, _SLOT.size)
            self._map = mmap.mmap(descriptor, _SLOT.size)
        finally:
            os.close(descriptor)

    def note(self) -> None:
        """A writer tried for the lock just now and found it taken."""
        _SLOT.pack_into(self._map, 0, time.monotonic())

    def since(self, moment: float) -> bool:
        """Whether a writer tried for the lock after ``moment`` (``time.monotonic()``)."""
        noted: float = _SLOT.unpack_from(self._map, 0)[0]
        return noted > moment


_open: dict[Path, LockWaits | None] = {}
_opening = threading.Lock()


def lock_waits(url: str) -> LockWaits | None:
    """The note shared by every user of the SQLite file at ``url``, opened once per process.

    None for PostgreSQL (row locks: a writer waits only for the rows it touches), for an
    in-memory database, and where the file cannot be made: transactions then end after
    ``transaction_hold_seconds``, as if someone were always waiting.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(f"{parsed.database}{SUFFIX}").resolve()
    with _opening:
        if path not in _open:
            try:
                _open[path] = LockWaits(path)
            except OSError:
                _open[path] = None
        return _open[path]
