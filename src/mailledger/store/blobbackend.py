"""Where raw messages, spooled DATA and attachments are kept: one interface, three backends.

``[storage] backend`` picks a directory (the default: content-addressed files, fsynced before
``250``), the database (chunked rows, so several nodes need nothing shared but PostgreSQL) or
an S3-compatible object store. Every caller holds a :class:`BlobBackend` made here by
:func:`open_blob_backend` and never learns which one it is.

Every backend keeps a local directory (``[storage] blob_dir``) for DATA that is too large to
hold in memory: it is spooled there as it arrives (``new_file``) and moved into the backend
by ``put_many``. That directory is private to the node; only the filesystem backend keeps
blobs in it.
"""

from __future__ import annotations

import abc
import hashlib
import io
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from mailledger.logs import get_logger
from mailledger.store.blobpack import shared_file_system
from mailledger.store.blobs import SPOOL_MAX_AGE_SECONDS, Blob, BlobFile, BlobStore, BlobStoreError

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from sqlalchemy import Engine

    from mailledger.config import Settings, StorageSettings

log = get_logger(__name__)

HEX = frozenset("0123456789abcdef")
# Reads and copies move this much at a time: far below a message's size, well above a syscall's.
READ_BYTES = 256 * 1024


def is_digest(digest: str) -> bool:
    """Whether ``digest`` is a SHA-256 in lowercase hex, as every backend names blobs."""
    return len(digest) == 64 and all(c in HEX for c in digest)


def check_digest(digest: str) -> str:
    """``digest`` if it names a blob; a ValueError otherwise (never a path or key built from it)."""
    if not is_digest(digest):
        raise ValueError(f"not a SHA-256 digest: {digest!r}")
    return digest


class BlobBackend(Protocol):
    """What every caller of the blob store uses, whichever backend holds the bytes.

    A digest is returned only once the bytes are durable (fsynced, committed, or acknowledged
    by the object store), so a row that names it may be committed and ``250`` answered.
    """

    @property
    def root(self) -> Path:
        """The node's local directory: spooled DATA (and the blobs, for the filesystem)."""
        ...

    @property
    def name(self) -> str:
        """``filesystem``, ``database`` or ``s3``: for messages and ``storage migrate``."""
        ...

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its digest; the same bytes twice cost nothing."""
        ...

    def put_pieces(self, pieces: tuple[bytes | memoryview, ...]) -> str:
        """Store the pieces, one after another, as one blob (no joined copy)."""
        ...

    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Store every blob durably; per blob, its digest or why it could not be stored."""
        ...

    def put_verified(self, digest: str, stream: BinaryIO) -> None:
        """Copy a blob in from ``stream``; a BlobStoreError, storing nothing, unless it hashes
        to ``digest``. ``storage migrate`` copies between backends with it."""
        ...

    def new_file(self) -> BlobFile:
        """A blob to write as it arrives (large DATA); store it with ``put_many``."""
        ...

    def sweep_spool(self, max_age_seconds: float = ...) -> int:
        """Remove spool files a crash left behind; how many."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes of a stored blob (small blobs only: large ones are read with ``open``)."""
        ...

    def open(self, digest: str) -> AbstractContextManager[BinaryIO]:
        """A stored blob as a seekable file to read in pieces; failures are BlobStoreError."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether a blob with this digest is stored (completely: never a half-written one)."""
        ...

    def size(self, digest: str) -> int:
        """The stored blob's length in bytes; a BlobStoreError when it is missing."""
        ...

    def delete(self, digest: str) -> None:
        """Remove a blob (retention, removal); a missing blob is not an error."""
        ...

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest, in no particular order (for ``storage migrate``)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class SweepableBackend(Protocol):
    """A backend ``storage sweep`` can clear of bytes no row names (store/blobsweep.py).

    The filesystem and the database qualify: each can remove a blob *only if* no writer has
    stored it (written it, or found it there and marked it) since a given time, in one step a
    writer cannot slip into. S3 offers no such conditional delete, so its sweep is refused.
    """

    def stored_before(self, cutoff: datetime) -> Iterator[str]:
        """Digests of the blobs last stored before ``cutoff``."""
        ...

    def remove_if_not_stored_since(self, digest: str, cutoff: datetime) -> bool:
        """Remove the blob unless a writer stored it at or after ``cutoff``; whether it went."""
        ...

    def remove_leftovers(self, cutoff: datetime) -> int:
        """Remove half-written leftovers of a crash older than ``cutoff``; how many."""
        ...


def open_blob_backend(
    settings: Settings, *, engine: Engine | None = None, backend: str | None = None
) -> BlobBackend:
    """The blob store ``settings`` name: the one place a backend is chosen.

    ``engine``: the database backend shares it (the server's own, tuned for intake);
    without it the backend makes its own. ``backend`` overrides ``[storage] backend``
    (``storage migrate`` opens the source and the target side by side).
    """
    storage = settings.storage
    chosen = backend or storage.backend
    if chosen == "filesystem":
        return BlobStore(storage.blob_dir, small_blob_bytes=_small_blob_bytes(storage))
    if chosen == "database":
        from mailledger.store.dbblobs import DatabaseBlobs  # noqa: PLC0415

        return DatabaseBlobs(settings.database.url, storage.blob_dir, engine=engine)
    if chosen == "s3":
        # boto3 takes a quarter of a second to import: only nodes that use it pay for it.
        from mailledger.store.s3blobs import S3Blobs  # noqa: PLC0415

        return S3Blobs(storage, storage.blob_dir)
    raise ValueError(f"[storage] backend: unknown backend {chosen!r}")


def _small_blob_bytes(storage: StorageSettings) -> int:
    """``[storage] small_blob_bytes``, or 0 where ``blob_dir`` is on a shared file system."""
    if not storage.small_blob_bytes:
        return 0
    shared = shared_file_system(storage.blob_dir)
    if shared is None:
        return storage.small_blob_bytes
    log.warning(
        "blob_dir is on a network file system: every blob is kept as a file",
        blob_dir=storage.blob_dir,
        file_system=shared,
        why="SQLite's locks are not safe over a network file system",
        fix="set [storage] small_blob_bytes = 0 to say so, or move blob_dir to a local disk",
    )
    return 0


class SpooledBackend(abc.ABC):
    """What the database and S3 backends share: a local spool and the calls built on ``put_many``.

    Large DATA is spooled to this node's directory by the filesystem store's own code and moved
    into the backend by ``put_many``; ``put``, ``put_pieces`` and ``get`` are that call and
    ``open`` for one blob, so each backend writes only how it stores and reads bytes.
    """

    def __init__(self, spool_dir: str | Path) -> None:
        self._spool = BlobStore(spool_dir)
        self.root = self._spool.root

    @abc.abstractmethod
    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Store every blob durably; per blob, its digest or why it could not be stored."""

    @abc.abstractmethod
    def open(self, digest: str) -> AbstractContextManager[BinaryIO]:
        """A stored blob as a seekable file that checks its digest as it is read."""

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its digest once it is durable."""
        return self.put_pieces((data,))

    def put_pieces(self, pieces: tuple[bytes | memoryview, ...]) -> str:
        """Store the pieces as one blob."""
        [result] = self.put_many([pieces])
        if isinstance(result, BlobStoreError):
            raise result
        return result

    def new_file(self) -> BlobFile:
        """A blob spooled to this node's directory as it arrives."""
        return self._spool.new_file()

    def sweep_spool(self, max_age_seconds: float = SPOOL_MAX_AGE_SECONDS) -> int:
        """Remove spool files a crash left behind."""
        return self._spool.sweep_spool(max_age_seconds)

    def get(self, digest: str) -> bytes:
        """The bytes of a stored blob, checked against its digest."""
        with self.open(digest) as stream:
            return stream.read()


def hash_pieces(pieces: Sequence[bytes | memoryview]) -> str:
    """The SHA-256 of the pieces as one blob, without joining them."""
    hasher = hashlib.sha256()
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


def hash_file(stream: BinaryIO) -> str:
    """The SHA-256 of everything ``stream`` gives from where it stands, read in pieces."""
    hasher = hashlib.sha256()
    while chunk := stream.read(READ_BYTES):
        hasher.update(chunk)
    return hasher.hexdigest()


def pieces_in_chunks(
    pieces: Sequence[bytes | memoryview], chunk_bytes: int
) -> Generator[bytes | memoryview, None, None]:
    """The pieces cut and joined into chunks of ``chunk_bytes`` (the last one shorter)."""
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        while view:
            if not pending and len(view) >= chunk_bytes:
                yield view[:chunk_bytes]
                view = view[chunk_bytes:]
                continue
            take = chunk_bytes - len(pending)
            pending += view[:take]
            view = view[take:]
            if len(pending) == chunk_bytes:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)


class VerifyingReader(io.RawIOBase):
    """A stored blob read piece by piece from a backend, checked against its digest.

    ``fetch(offset, limit)`` returns up to ``limit`` bytes at ``offset`` (fewer only at the
    end). While the blob is read straight through from the start, its bytes are hashed; at the
    end a digest other than the blob's name raises BlobStoreError, so a corrupted copy is never
    taken for the message. Seeking elsewhere stops the check until the next read from 0.
    """

    def __init__(
        self, digest: str, size: int, fetch: Callable[[int, int], bytes | memoryview]
    ) -> None:
        super().__init__()
        self._digest = digest
        self._size = size
        self._fetch = fetch
        self._pos = 0
        self._hasher: hashlib._Hash | None = hashlib.sha256()
        self._hashed = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        if self._pos == 0:
            self._hasher, self._hashed = hashlib.sha256(), 0
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            self._check_end()
            return 0
        data = self._fetch(self._pos, want)
        if not data:
            raise BlobStoreError(0, f"blob {self._digest}: shorter than its {self._size} bytes")
        buffer[: len(data)] = data
        if self._hasher is not None:
            if self._hashed == self._pos:
                self._hasher.update(data)
                self._hashed += len(data)
            else:
                self._hasher = None
        self._pos += len(data)
        if self._pos >= self._size:
            self._check_end()
        return len(data)

    def _check_end(self) -> None:
        if self._hasher is None or self._hashed != self._size:
            return
        actual = self._hasher.hexdigest()
        self._hasher = None  # checked once
        if actual != self._digest:
            raise BlobStoreError(0, f"blob {self._digest}: stored bytes hash to {actual}")


def reader(digest: str, size: int, fetch: Callable[[int, int], bytes | memoryview]) -> BinaryIO:
    """A buffered, seekable, verifying file over ``fetch`` (see :class:`VerifyingReader`)."""
    raw = VerifyingReader(digest, size, fetch)
    return io.BufferedReader(raw, READ_BYTES)
