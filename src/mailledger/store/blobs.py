"""Content-addressed blob store for raw messages and attachments.

A blob is written to a temporary name, fsynced, renamed to its SHA-256, and the directory is
fsynced, so once ``put`` returns the bytes survive a crash or power loss (DESIGN §9). Blobs
up to ``small_blob_bytes`` (``[storage] small_blob_bytes``) go into one SQLite file in the
same directory instead (``store.blobpack``): a file each cost the kernel more than the rest
of a small message's storing. Reads look there first whatever the setting, so a directory
written with another setting is read the same.
``put_many`` does the same for a batch with one directory fsync per directory instead of one
per blob: intake's group commit stores many messages at once, and a directory fsync costs a
journal commit.

A blob's name is durable only when its fan-out directory's own entry in the root is durable
too. Finding the directory there proves nothing: another writer (the processing step storing
a stamped copy, another process on the same directory) may have made it and not yet synced
the root. So the root is synced the first time this store puts a blob in each fan-out
directory, whoever made it; after that the directory is known durable and costs nothing.

The blob paths are plain strings and ``os`` calls: every message a listener accepts or sync
fetches is a blob, and pathlib's parsing of each path cost more user CPU than the file
system's work (133-149 against 59-68 µs a 10 KB blob, ``put_many`` of 250 at a time).
"""

# ruff: noqa: PTH103, PTH104, PTH105, PTH108, PTH116, PTH120, PTH123 - string paths, as said above

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from mailledger.store.blobpack import BlobPack
from mailledger.store.durable import fsync_dir

_T = TypeVar("_T")
_R = TypeVar("_R")

# Threads for a batch's fsyncs; more than a batch usually has blobs gains nothing.
FSYNC_THREADS = 16


class BlobStoreError(OSError):
    """The blob store cannot take or give bytes (full, read-only, missing)."""


class BlobFile:
    """A blob written as it arrives, hashed on the way: a large DATA, not held in memory.

    It lives under a temporary name (``.spool-*``) in the store's root until ``put_many``
    fsyncs it and renames it to its digest, like a blob given as bytes; ``discard`` removes it
    if it is not stored. Spool files older than a day are leftovers of a crash
    (``BlobStore.sweep_spool``).
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=root)
        self.path = Path(name)
        self._hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; an OSError (disk full, read-only) leaves the file to ``discard``."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._hasher.update(data)
        self.size += len(data)

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        """No more writes (the file stays until it is stored or discarded)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def digest(self) -> str:
        """The SHA-256 of everything written."""
        return self._hasher.hexdigest()

    def discard(self) -> None:
        """Remove the file unless it was stored (then it is gone already)."""
        self.close()
        self.path.unlink(missing_ok=True)


SPOOL_PREFIX = ".spool-"
TMP_PREFIX = ".tmp-"  # a blob being written into its fan-out directory
TRASH_PREFIX = ".trash-"  # a blob being removed by ``storage sweep``
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
_tmp_names = itertools.count()  # next() on a count is atomic under the GIL
_HEX = re.compile("[0-9a-f]{64}")
SPOOL_MAX_AGE_SECONDS = 24 * 3600
# What put_many takes: bytes, pieces stored one after another, or a file written as it came.
Blob = bytes | tuple[bytes | memoryview, ...] | BlobFile


class BlobStore:
    """A directory of files named by their SHA-256, fanned out by the first two hex digits."""

    def __init__(self, root: str | Path, *, small_blob_bytes: int = 0) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        # Blobs up to this size are written to the pack; 0: every blob is a file.
        self._small_blob_bytes = small_blob_bytes
        self._pack = BlobPack(self.root)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # Fan-out directories whose entry in the root this store has synced itself.
        self._durable_dirs: set[str] = set()
        # Fan-out directories known to exist (made or found by this store).
        self._made_dirs: set[str] = set()

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives."""
        return Path(self._file_of(digest))

    def _file_of(self, digest: str) -> str:
        """The blob's file name, as a string (``open`` runs for every message processed)."""
        if len(digest) != 64 or _HEX.fullmatch(digest) is None:
            raise ValueError(f"not a SHA-256 digest: {digest!r}")
        return f"{self._root}/{digest[:2]}/{digest}"

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its digest; storing the same bytes twice is free."""
        return self.put_pieces((data,))

    def put_pieces(self, pieces: tuple[bytes | memoryview, ...]) -> str:
        """Store the pieces, one after another, as one blob: no joined copy of a large message."""
        result = self.put_many([pieces])[0]
        if isinstance(result, BlobStoreError):
            raise result
        return result

    def new_file(self) -> BlobFile:
        """A blob to write as it arrives; store it with ``put_many`` like bytes."""
        return BlobFile(self.root)

    def sweep_spool(self, max_age_seconds: float = SPOOL_MAX_AGE_SECONDS) -> int:
        """Remove spool files a crash left behind (older than any DATA takes); how many."""
        removed = 0
        cutoff = time.time() - max_age_seconds
        for path in self.root.glob(SPOOL_PREFIX + "*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Store every blob durably; per blob, its digest or why it could not be stored.

        A blob is bytes, a tuple of pieces stored one after another, or a ``BlobFile``.

        Blobs up to ``small_blob_bytes`` go into the pack, all in one transaction. Each other
        blob's bytes are fsynced and renamed into place, then every directory a blob was
        renamed into (or found in) is fsynced once, and the root too when this store has not
        yet synced that fan-out directory's entry in it (made now, or by another writer). A
        digest is returned only once all of that succeeded for its blob. The fsyncs of a batch
        run side by side: the filesystem folds concurrent fsyncs into one journal commit, where
        one after another each waits for its own.
        """
        fits = [self._packable(blob) for blob in blobs]
        small = [i for i, packable in enumerate(fits) if packable]
        large = [i for i, packable in enumerate(fits) if not packable]
        results: list[str | BlobStoreError] = [""] * len(blobs)
        for indexes, put in ((small, self._put_packed), (large, self._put_files)):
            if indexes:
                outcomes = put([blobs[i] for i in indexes])
                for index, outcome in zip(indexes, outcomes, strict=True):
                    results[index] = outcome
        return results

    def _packable(self, blob: Blob) -> bool:
        """Whether the blob is small enough for the pack (spooled DATA never is)."""
        limit = self._small_blob_bytes
        if not limit or isinstance(blob, BlobFile):
            return False
        if isinstance(blob, bytes):
            return len(blob) <= limit
        return sum(len(piece) for piece in blob) <= limit

    def _put_packed(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Small blobs into the pack, in one transaction: all stored, or none."""
        rows = []
        for blob in blobs:
            data = blob if isinstance(blob, bytes) else b"".join(blob)  # type: ignore[arg-type]
            rows.append((hashlib.sha256(data).hexdigest(), data))
        try:
            self._pack.put_many(rows)
        except (sqlite3.Error, OSError) as exc:
            error = self._pack_error(exc)
            return [error] * len(rows)
        return [digest for digest, _ in rows]

    def _pack_error(self, exc: Exception) -> BlobStoreError:
        error = BlobStoreError(
            getattr(exc, "errno", None) or 0, f"blob store {self._pack.path}: {exc}"
        )
        error.__cause__ = exc
        return error

    def _put_files(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """``put_many`` for the blobs kept as files of their own."""
        placed = self._map(self._try_place, blobs)
        results: list[str | BlobStoreError] = []
        # Directory -> the indexes of the blobs whose durability depends on its fsync.
        dirs: dict[str, list[int]] = {}
        for index, outcome in enumerate(placed):
            if isinstance(outcome, OSError):
                results.append(self._error(outcome))
                continue
            digest, directory = outcome
            results.append(digest)
            dirs.setdefault(directory, []).append(index)
            if directory not in self._durable_dirs:
                dirs.setdefault(self._root, []).append(index)
        errors = dict(zip(dirs, self._map(_try_fsync_dir, list(dirs)), strict=True))
        for directory, error in errors.items():
            if error is not None:
                for index in dirs[directory]:
                    results[index] = self._error(error)
        if self._root in errors and errors[self._root] is None:
            # Every directory a blob went into existed before the root's fsync began.
            self._durable_dirs.update(d for d in dirs if d != self._root)
        return results

    def _map(self, func: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``func`` over ``items``, in the store's threads when there is more than one."""
        if len(items) <= 1:
            return [func(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="blob-fsync")
        return list(self._pool.map(func, items))

    def _try_place(self, blob: Blob) -> tuple[str, str] | OSError:
        try:
            if isinstance(blob, BlobFile):
                return self._adopt(blob)
            return self._place(blob if isinstance(blob, tuple) else (blob,))
        except OSError as exc:
            return exc

    def _fan_out(self, digest: str) -> tuple[str, str]:
        """The blob's directory (created if missing) and its final path.

        Plain strings and ``os`` calls: a synced mailbox or a busy listener stores thousands
        of blobs a second, and pathlib's parsing of each path cost more than the file system.
        """
        directory = f"{self._root}/{digest[:2]}"
        if directory not in self._made_dirs:
            os.makedirs(directory, exist_ok=True)
            self._made_dirs.add(directory)
        return directory, f"{directory}/{digest}"

    def _adopt(self, file: BlobFile) -> tuple[str, str]:
        """``_place`` for a blob already written: fsync it and rename it to its digest."""
        file.close()
        digest = file.digest
        directory, target = self._fan_out(digest)
        if _stored_again(target):
            file.discard()
            return digest, directory
        fd = os.open(file.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(file.path, target)
        return digest, directory

    def _place(self, pieces: tuple[bytes | memoryview, ...]) -> tuple[str, str]:
        """Write one blob under its final name (fsynced, not yet its directory).

        Returns the digest and the directory to fsync.
        """
        hasher = hashlib.sha256()
        for piece in pieces:
            hasher.update(piece)
        digest = hasher.hexdigest()
        directory, target = self._fan_out(digest)
        if _stored_again(target):
            # Possibly renamed by another writer whose directory fsync is still to come.
            return digest, directory
        # A name no other writer uses (process, thread, a count), made exclusively as
        # mkstemp's is, without its random names and retries.
        tmp = f"{directory}/{TMP_PREFIX}{digest[:16]}-{os.getpid()}-{next(_tmp_names)}"
        try:
            fd = os.open(tmp, _TMP_FLAGS, 0o600)
        except FileNotFoundError:
            # The directory went away since this store made it (removed by hand): again.
            self._made_dirs.discard(directory)
            self._fan_out(digest)
            fd = os.open(tmp, _TMP_FLAGS, 0o600)
        try:
            try:
                for piece in pieces:
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest, directory

    def _error(self, exc: OSError) -> BlobStoreError:
        error = BlobStoreError(exc.errno, f"blob store {self.root}: {exc.strerror}")
        error.__cause__ = exc
        return error

    def get(self, digest: str) -> bytes:
        """The bytes of a stored blob."""
        with self.open(digest) as stream:
            return stream.read()

    @contextlib.contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """A stored blob as a file to read; failing to open or read it is a BlobStoreError."""
        name = self._file_of(digest)
        packed, failed = self._look_in_pack(lambda: self._pack.get(digest))
        if packed is not None:
            yield io.BytesIO(packed)
            return
        try:
            with open(name, "rb") as stream:
                yield stream
        except BlobStoreError:
            raise
        except FileNotFoundError as exc:
            raise failed or BlobStoreError(exc.errno, f"blob {digest}: {exc.strerror}") from exc
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"blob {digest}: {exc.strerror}") from exc

    def _packed(self, read: Callable[[], _R]) -> _R:
        """A read of the pack; its failure is a BlobStoreError like a file's."""
        try:
            return read()
        except sqlite3.Error as exc:
            raise self._pack_error(exc) from exc

    def _each_packed(self, digests: Iterator[str]) -> Iterator[str]:
        """Digests read from the pack a page at a time; its failure is a BlobStoreError."""
        try:
            yield from digests
        except sqlite3.Error as exc:
            raise self._pack_error(exc) from exc

    def _look_in_pack(
        self, read: Callable[[], _R | None]
    ) -> tuple[_R | None, BlobStoreError | None]:
        """A read of the pack, and why it failed: a blob kept as a file is still read from a
        pack that cannot be (the failure is raised only if there is no file either)."""
        try:
            return read(), None
        except sqlite3.Error as exc:
            return None, self._pack_error(exc)

    def delete(self, digest: str) -> None:
        """Remove a blob (retention, quarantine delete); a missing blob is not an error."""
        path = self.path(digest)
        self._packed(lambda: self._pack.delete(digest))
        path.unlink(missing_ok=True)

    @property
    def name(self) -> str:
        """This backend's name in ``[storage] backend``."""
        return "filesystem"

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored (a file under its digest is complete: it was renamed)."""
        path = self.path(digest)
        if path.exists():
            return True
        return self._packed(lambda: self._pack.size(digest)) is not None

    def size(self, digest: str) -> int:
        """The stored blob's length in bytes."""
        path = self.path(digest)
        packed, failed = self._look_in_pack(lambda: self._pack.size(digest))
        if packed is not None:
            return packed
        try:
            return path.stat().st_size
        except FileNotFoundError as exc:
            raise failed or BlobStoreError(exc.errno, f"blob {digest}: {exc.strerror}") from exc
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"blob {digest}: {exc.strerror}") from exc

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest: the packed ones, then the files named by a digest in
        the fan-out directories (each once, should a blob be in both)."""
        yield from self._each_packed(self._pack.digests())
        for entry in self._blob_entries():
            if self._packed(lambda: self._pack.size(entry.name)) is None:  # noqa: B023 - called at once
                yield entry.name

    def _blob_entries(self) -> Iterator[os.DirEntry[str]]:
        """The stored blobs' directory entries: files named by a digest in their fan-out
        directory (not the temporary, set-aside or spooled files beside them)."""
        for directory in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            with (
                contextlib.suppress(FileNotFoundError, NotADirectoryError),
                os.scandir(directory) as entries,
            ):
                for entry in entries:
                    name = entry.name
                    if len(name) == 64 and name.startswith(directory.name) and _is_hex(name):
                        yield entry

    def put_verified(self, digest: str, stream: BinaryIO) -> None:
        """Copy a blob in from ``stream``, stored only if it hashes to ``digest``."""
        self.path(digest)  # a bad digest is refused before anything is written
        file = self.new_file()
        try:
            try:
                while chunk := stream.read(COPY_BYTES):
                    file.write(chunk)
            finally:
                file.close()
            if file.digest != digest:
                raise BlobStoreError(0, f"blob {digest}: the copy hashes to {file.digest}")
            small = bool(self._small_blob_bytes) and file.size <= self._small_blob_bytes
            [result] = self.put_many([file.path.read_bytes() if small else file])
            if isinstance(result, BlobStoreError):
                raise result
        finally:
            file.discard()

    def stored_before(self, cutoff: datetime) -> Iterator[str]:
        """Digests of the blobs last stored before ``cutoff`` (their row's time in the pack,
        their file's mtime); one in both places may be given twice."""
        yield from self._each_packed(self._pack.stored_before(cutoff))
        limit = cutoff.timestamp()
        for entry in self._blob_entries():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < limit:
                    yield entry.name

    def remove_if_not_stored_since(self, digest: str, cutoff: datetime) -> bool:
        """Remove the blob unless it was stored (written or found) at or after ``cutoff``.

        The file is first renamed aside, so a writer looking for it from then on writes it
        again; then its mtime says whether a writer found it just before. If one did, it goes
        back under its name (and the directory is fsynced, as for any blob). A packed blob
        goes in one statement that checks its time. Whether the blob went: from the pack,
        the file, or both, with nothing of it left.
        """
        packed = self._packed(lambda: self._pack.remove_if_not_stored_since(digest, cutoff))
        removed = self._remove_file_if_not_stored_since(digest, cutoff)
        return (packed or removed) and not self.exists(digest)

    def _remove_file_if_not_stored_since(self, digest: str, cutoff: datetime) -> bool:
        target = self._file_of(digest)
        directory = os.path.dirname(target)
        aside = f"{directory}/{TRASH_PREFIX}{digest[:16]}-{os.getpid()}-{next(_tmp_names)}"
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        try:
            stored_again = os.stat(aside).st_mtime >= cutoff.timestamp()
            if not stored_again:
                os.unlink(aside)
                return True
            os.replace(aside, target)  # a writer found it meanwhile: it stays
            fsync_dir(directory)
        except OSError as exc:
            raise self._error(exc) from exc
        return False

    def remove_leftovers(self, cutoff: datetime) -> int:
        """Remove blobs half-written or half-removed before ``cutoff`` (a crash's leftovers)."""
        limit = cutoff.timestamp()
        removed = 0
        for directory in self.root.glob("[0-9a-f][0-9a-f]"):
            for prefix in (TMP_PREFIX, TRASH_PREFIX):
                for path in directory.glob(prefix + "*"):
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < limit:
                            path.unlink()
                            removed += 1
        return removed + self.sweep_spool(time.time() - limit)

    def close(self) -> None:
        """Stop the fsync threads (a store used again starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        self._pack.close()


# put_verified copies this much at a time.
COPY_BYTES = 256 * 1024


def _is_hex(name: str) -> bool:
    return all(c in "0123456789abcdef" for c in name)


def _stored_again(target: str) -> bool:
    """Whether the blob is stored already, marking it stored now (its mtime) if so.

    The mark is what keeps ``storage sweep`` from removing bytes a writer has just found and
    is about to name in a row: the sweep takes only blobs not stored for days, and checks
    again after moving one aside (``remove_if_not_stored_since``). A blob the sweep moved
    aside first is not found here, so it is written again.
    """
    try:
        os.utime(target)
    except FileNotFoundError:
        return False
    except PermissionError:
        pass  # another owner's file: there, though this writer cannot mark it
    return True


def _try_fsync_dir(directory: str) -> OSError | None:
    try:
        fsync_dir(directory)
    except OSError as exc:
        return exc
    return None
