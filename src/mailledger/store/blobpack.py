"""Small blobs kept together in one SQLite file in the blob directory, not a file each.

A 10 KB message stored as a file of its own costs the kernel a file creation, an fsync and a
directory fsync: on the bench's virtual machines that was half the server's CPU for each
message (`make bench`, ``python -m bench.timeline``), where a row appended to a write-ahead
log costs a fraction and a whole batch shares one fsync. SQLite's own measurements say the
same for blobs of this size ("35 % Faster Than The Filesystem", and "Internal Versus
External BLOBs": below about 100 KB a blob reads and writes faster inside the database). So
the filesystem backend keeps blobs up to ``[storage] small_blob_bytes`` here, and larger
ones (and spooled DATA) as files, the way git keeps packed and loose objects.

Durability is the file store's: ``put_many`` returns once the rows are committed with
``synchronous=FULL`` in WAL mode, i.e. after the log's fsync. Every process of a node (the
listener, the processing processes, sync) writes here; SQLite's one write lock is taken by
trying often rather than with its busy handler, whose sleeps grow to 100 ms. ``stored_at``
is when a writer last stored the bytes (written, or found there already): ``storage sweep``
removes only rows not stored since its cutoff, in one statement a writer cannot slip into.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

from mailledger.store.durable import fsync_dir
from mailledger.store.engine import poll_write_lock

PACK_NAME = "small-blobs.sqlite3"


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (``sqlite3.Connection`` cannot)."""


# Connections a forked child inherited from its parent: never used, never closed.
_INHERITED: list[sqlite3.Connection] = []
# How long a writer keeps trying for the write lock before it gives up (BlobStoreError).
LOCK_TIMEOUT_SECONDS = 30.0
# The first wait for the lock, doubled up to the longest.
FIRST_WAIT_SECONDS = 0.0002
LONGEST_WAIT_SECONDS = 0.005

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS blobs ("
    " hash TEXT PRIMARY KEY NOT NULL,"
    " data BLOB NOT NULL,"
    " stored_at REAL NOT NULL)"
)
_UPSERT = (
    "INSERT INTO blobs (hash, data, stored_at) VALUES (?, ?, ?)"
    " ON CONFLICT (hash) DO UPDATE SET stored_at = excluded.stored_at"
)


class BlobPack:
    """The small blobs of one blob directory: one SQLite file, a connection per thread."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / PACK_NAME
        self._local = threading.local()
        self._lock = threading.Lock()
        # Every connection this process opened, to close them all; weakly, so a thread's
        # connection goes (and is closed) with the thread.
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._pid = os.getpid()

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's connection, or None when there is no pack to read (a directory that
        never packed a blob has none)."""
        return self._connection(create=False)

    def _connection(self, *, create: bool = True) -> sqlite3.Connection | None:
        """This thread's connection to the file now at ``path``, made on first use.

        Checked against the file's identity each time: a connection keeps writing to the file
        it opened even once that is renamed or removed, and bytes written there would be lost
        to every other process. After a fork the parent's connections are never used either:
        SQLite's locks belong to the process that opened them.
        """
        try:
            found = self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            found = None
        identity = None if found is None else (found.st_dev, found.st_ino)
        local = self._local
        connection: _Connection | None = getattr(local, "connection", None)
        if connection is not None:
            if local.pid == os.getpid() and local.identity == identity:
                return connection
            self._forget(connection, local.pid)
        if found is None and not create:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=LOCK_TIMEOUT_SECONDS,
            factory=_Connection,
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(_SCHEMA)
            made = self.path.stat()
            if found is None:
                fsync_dir(str(self.path.parent))  # the new file's name is durable too
        except BaseException:
            connection.close()
            raise
        local.connection, local.pid = connection, os.getpid()
        local.identity = (made.st_dev, made.st_ino)
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's list is not ours to close
                self._connections, self._pid = weakref.WeakSet(), os.getpid()
            self._connections.add(connection)
        return connection

    def _forget(self, connection: _Connection, pid: int) -> None:
        """Drop this thread's connection to a file no longer at ``path`` (or a parent's)."""
        self._local.connection = None
        if pid != os.getpid():
            # The parent's, inherited by a fork: kept, never closed or freed here, since
            # SQLite's close in the child would act on the parent's file and locks.
            _INHERITED.append(connection)
            return
        with self._lock:
            self._connections.discard(connection)
        connection.close()

    def put_many(self, blobs: Sequence[tuple[str, bytes]]) -> None:
        """Store ``(digest, bytes)`` pairs in one transaction; durable when this returns.

        Bytes already stored are marked stored now (``stored_at``), as the file store
        marks a file it finds. An ``sqlite3.Error`` means none of them was stored.
        """
        if not blobs:
            return
        now = time.time()
        with self._writing() as connection:
            connection.executemany(_UPSERT, [(digest, data, now) for digest, data in blobs])

    def get(self, digest: str) -> bytes | None:
        """The blob's bytes, or None when it is not in the pack."""
        connection = self._reader()
        if connection is None:
            return None
        row = connection.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else bytes(row[0])

    def size(self, digest: str) -> int | None:
        """The blob's length, or None when it is not in the pack."""
        connection = self._reader()
        if connection is None:
            return None
        row = connection.execute(
            "SELECT length(data) FROM blobs WHERE hash = ?", (digest,)
        ).fetchone()
        return None if row is None else int(row[0])

    def delete(self, digest: str) -> bool:
        """Remove the blob; whether it was here."""
        if self._reader() is None:
            return False
        return self._write("DELETE FROM blobs WHERE hash = ?", (digest,)) > 0

    def digests(self) -> Iterator[str]:
        """Every packed blob's digest."""
        yield from self._hashes("SELECT hash FROM blobs", ())

    def stored_before(self, cutoff: datetime) -> Iterator[str]:
        """Digests of the packed blobs last stored before ``cutoff``."""
        yield from self._hashes("SELECT hash FROM blobs WHERE stored_at < ?", (cutoff.timestamp(),))

    def remove_if_not_stored_since(self, digest: str, cutoff: datetime) -> bool:
        """Remove the blob unless a writer stored it at or after ``cutoff``; whether it went."""
        if self._reader() is None:
            return False
        statement = "DELETE FROM blobs WHERE hash = ? AND stored_at < ?"
        return self._write(statement, (digest, cutoff.timestamp())) > 0

    def _hashes(self, query: str, params: tuple[object, ...]) -> Iterator[str]:
        """The hashes a query selects, read in pages so no read stays open while a caller
        removes what it is given."""
        connection = self._reader()
        if connection is None:
            return
        after = ""
        while True:
            page = [
                str(row[0])
                for row in connection.execute(
                    f"SELECT hash FROM ({query}) WHERE hash > ? ORDER BY hash LIMIT 500",  # noqa: S608 - our own queries
                    (*params, after),
                )
            ]
            yield from page
            if len(page) < 500:
                return
            after = page[-1]

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection: committed, or rolled back."""
        connection = self._connection()
        assert connection is not None  # made when missing
        poll_write_lock(
            connection,
            first_wait=FIRST_WAIT_SECONDS,
            longest_wait=LONGEST_WAIT_SECONDS,
            timeout=LOCK_TIMEOUT_SECONDS,
        )
        try:
            yield connection
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _write(self, statement: str, params: tuple[object, ...]) -> int:
        with self._writing() as connection:
            return int(connection.execute(statement, params).rowcount)

    def close(self) -> None:
        """Close every connection this process opened."""
        with self._lock:
            connections = list(self._connections) if self._pid == os.getpid() else []
            self._connections = weakref.WeakSet()
        for connection in connections:
            connection.close()
        self._local = threading.local()


# File systems shared over a network or a cluster: SQLite's locks are not safe on them
# (sqlite.org, "How To Corrupt An SQLite Database File", §2), so a blob directory there
# keeps every blob as a file.
_SHARED_FILE_SYSTEMS = (
    "nfs",
    "cifs",
    "smb",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "lustre",
    "gpfs",
    "beegfs",
    "ocfs2",
    "gfs2",
    "fuse.",
)


def shared_file_system(path: str | Path, mountinfo: str | None = None) -> str | None:
    """The type of the network or cluster file system ``path`` is on, or None.

    Read from ``/proc/self/mountinfo`` (or ``mountinfo``): the mount with the longest mount
    point that contains the path. None also where that cannot be read (not Linux).
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", ""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind if kind.startswith(_SHARED_FILE_SYSTEMS) else None
