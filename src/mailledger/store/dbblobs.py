"""Blobs in the database: ``[storage] backend = "database"``.

A blob is a ``blobs`` row (digest, length, chunk size) and its ``blob_chunks`` rows of at most
:data:`CHUNK_BYTES` each (``bytea`` on PostgreSQL), written chunk by chunk and read chunk by
chunk, so a 25 MB message is never whole in memory on either side. The row and its chunks
commit in one transaction: a row found is a complete blob.

Durability: ``put_many`` commits the blobs in their own transaction *before* the intake
transaction that records the messages naming them, the same order as the filesystem's
(bytes durable, then the row, then ``250``). A crash between the two leaves a blob nothing
names (unreferenced bytes, as a crash leaves an unreferenced file), never a row naming
missing bytes. Writing them in the intake transaction instead would be as safe for the
message but would hand every blob writer the caller's connection (processing stores
attachments inside its own transaction), hold intake's group commit open for megabytes of
chunks, and let one duplicate digest racing in from another node abort a whole batch.

On SQLite the tables live in a file of their own beside the database (``NAME.blobs.db``,
same schema): SQLite has one writer per file, and a blob written while the caller's own
transaction holds that lock (an attachment during processing, an outbound copy while
queueing) would wait for itself. PostgreSQL keeps them in the main database.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Generator, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from sqlalchemy import Connection, Engine, Table, delete, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from mailledger.store.blobbackend import (
    SpooledBackend,
    check_digest,
    hash_pieces,
    pieces_in_chunks,
    reader,
)
from mailledger.store.blobs import Blob, BlobFile, BlobStoreError
from mailledger.store.engine import READ_ONLY, make_engine
from mailledger.store.models import BlobChunk, StoredBlob, utcnow

# One row per MiB: a 25 MB message is 25 rows, each far below PostgreSQL's 1 GB bytea limit
# and SQLite's default 1 GB blob limit, and one chunk is all a reader holds at a time.
CHUNK_BYTES = 1024 * 1024
_BLOBS = cast("Table", StoredBlob.__table__)
_CHUNKS = cast("Table", BlobChunk.__table__)


def blob_database_url(url: str) -> str:
    """Where the blob tables are: the database itself, or an SQLite file beside it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return url
    if not parsed.database or parsed.database == ":memory:":
        raise ValueError('[storage] backend = "database" needs a file or PostgreSQL database')
    path = Path(parsed.database)
    return parsed.set(
        database=str(path.with_name(f"{path.stem}.blobs{path.suffix}"))
    ).render_as_string(hide_password=False)


class DatabaseBlobs(SpooledBackend):
    """Blobs as chunked rows; spooled DATA waits in a local directory until it is stored."""

    def __init__(self, database_url: str, spool_dir: str | Path, *, engine: Engine | None = None):
        url = blob_database_url(database_url)
        self._own_engine = engine is None or url != database_url
        self._engine: Engine = make_engine(url) if engine is None or self._own_engine else engine
        if self._engine.dialect.name == "sqlite":
            # A file of its own (see the module docstring): its schema is these two tables.
            with self._engine.begin() as conn:
                for table in (_BLOBS, _CHUNKS):
                    table.create(conn, checkfirst=True)
        # Spooling and sweeping are the filesystem store's, in this node's own directory.
        super().__init__(spool_dir)

    @property
    def name(self) -> str:
        """This backend's name in ``[storage] backend``."""
        return "database"

    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Store every blob in one transaction, each in a savepoint of its own.

        A blob that cannot be written fails alone; a commit that fails fails them all. A
        digest is returned only after the commit. Spool files are removed once committed.
        """
        results: list[str | BlobStoreError] = []
        try:
            with self._engine.begin() as conn:
                for blob in blobs:
                    results.append(self._put_one(conn, blob))
        except (OSError, SQLAlchemyError) as exc:
            return [self._error(exc)] * len(blobs)
        for blob in blobs:
            if isinstance(blob, BlobFile):
                blob.discard()
        return results

    def _put_one(self, conn: Connection, blob: Blob) -> str | BlobStoreError:
        """Write one blob in a savepoint; its digest, or why not."""
        try:
            digest, size, chunks = _source(blob)
        except OSError as exc:
            return self._error(exc)
        try:
            with conn.begin_nested():
                if not self._stored_again(conn, digest):
                    with contextlib.closing(chunks):
                        self._insert(conn, digest, size, chunks)
        except IntegrityError as exc:
            # Another node stored the same bytes first: once it committed, the blob is there.
            return digest if self._stored_again(conn, digest) else self._error(exc)
        except (OSError, SQLAlchemyError) as exc:
            return self._error(exc)
        return digest

    def _stored_again(self, conn: Connection, digest: str) -> bool:
        """Whether the blob is stored already, marking it stored now if so.

        ``created_at`` is when the bytes were last stored: ``storage sweep`` removes only
        blobs not stored for days, in a statement that checks it again, so bytes a writer
        has just found (and is about to name in a row) are never removed under it.
        """
        found = conn.execute(
            update(_BLOBS).where(_BLOBS.c.hash == digest).values(created_at=utcnow())
        )
        return bool(found.rowcount)

    def _present(self, conn: Connection, digest: str) -> bool:
        return (
            conn.execute(select(_BLOBS.c.hash).where(_BLOBS.c.hash == digest)).first() is not None
        )

    def _insert(
        self, conn: Connection, digest: str, size: int, chunks: Iterable[bytes | memoryview]
    ) -> int:
        """The row, then the chunks one statement each (one chunk in memory); the bytes written."""
        conn.execute(
            insert(_BLOBS).values(
                hash=digest, size=size, chunk_bytes=CHUNK_BYTES, created_at=utcnow()
            )
        )
        written = 0
        for seq, chunk in enumerate(chunks):
            conn.execute(insert(_CHUNKS).values(hash=digest, seq=seq, data=bytes(chunk)))
            written += len(chunk)
        return written

    def put_verified(self, digest: str, stream: BinaryIO) -> None:
        """Copy a blob in, committed only if it hashes to ``digest`` (else rolled back)."""
        check_digest(digest)
        hasher = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in _read_chunks(stream):
                hasher.update(chunk)
                yield chunk

        try:
            with self._engine.begin() as conn:
                if self._present(conn, digest):
                    return
                size = self._insert(conn, digest, 0, hashed())
                if hasher.hexdigest() != digest:
                    raise BlobStoreError(
                        0, f"blob {digest}: the copy hashes to {hasher.hexdigest()}"
                    )
                conn.execute(update(_BLOBS).where(_BLOBS.c.hash == digest).values(size=size))
        except IntegrityError:
            if not self.exists(digest):  # not stored meanwhile by another writer
                raise
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc

    @contextlib.contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """A stored blob as a seekable file that fetches one chunk at a time."""
        size, chunk_bytes = self._meta(digest)
        cache: dict[int, bytes] = {}

        def fetch(offset: int, limit: int) -> memoryview:
            seq, start = divmod(offset, chunk_bytes)
            if seq not in cache:
                cache.clear()  # one chunk held at a time
                cache[seq] = self._chunk(digest, seq)
            return memoryview(cache[seq])[start : start + limit]

        with reader(digest, size, fetch) as stream:
            yield stream

    def _read(self) -> Any:
        # On SQLite a reader must not take the write lock (store.engine.reading).
        return self._engine.connect().execution_options(**{READ_ONLY: True})

    def _meta(self, digest: str) -> tuple[int, int]:
        check_digest(digest)
        try:
            with self._read() as conn:
                row = conn.execute(
                    select(_BLOBS.c.size, _BLOBS.c.chunk_bytes).where(_BLOBS.c.hash == digest)
                ).first()
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc
        if row is None:
            raise BlobStoreError(2, f"blob {digest}: not in the database")
        return int(row.size), int(row.chunk_bytes)

    def _chunk(self, digest: str, seq: int) -> bytes:
        try:
            with self._read() as conn:
                data = conn.execute(
                    select(_CHUNKS.c.data).where(_CHUNKS.c.hash == digest, _CHUNKS.c.seq == seq)
                ).scalar()
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc
        if data is None:
            raise BlobStoreError(2, f"blob {digest}: chunk {seq} is missing")
        return bytes(data)

    def exists(self, digest: str) -> bool:
        """Whether the blob's row is committed (its chunks came with it)."""
        check_digest(digest)
        try:
            with self._read() as conn:
                return self._present(conn, digest)
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc

    def size(self, digest: str) -> int:
        """The stored blob's length in bytes."""
        return self._meta(digest)[0]

    def delete(self, digest: str) -> None:
        """Remove the blob's chunks and row; a missing blob is not an error."""
        check_digest(digest)
        try:
            with self._engine.begin() as conn:
                conn.execute(delete(_CHUNKS).where(_CHUNKS.c.hash == digest))
                conn.execute(delete(_BLOBS).where(_BLOBS.c.hash == digest))
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest, read in pages so a large store is never listed whole."""
        return self._hashes()

    def stored_before(self, cutoff: datetime) -> Iterator[str]:
        """Digests of the blobs last stored before ``cutoff``, read in pages."""
        return self._hashes(_BLOBS.c.created_at < cutoff)

    def _hashes(self, *where: ColumnElement[bool]) -> Iterator[str]:
        """The digests of the rows ``where`` selects, in digest order, a page at a time."""
        after = ""
        while True:
            with self._read() as conn:
                page = list(
                    conn.execute(
                        select(_BLOBS.c.hash)
                        .where(_BLOBS.c.hash > after, *where)
                        .order_by(_BLOBS.c.hash)
                        .limit(1000)
                    ).scalars()
                )
            if not page:
                return
            yield from page
            after = page[-1]

    def remove_if_not_stored_since(self, digest: str, cutoff: datetime) -> bool:
        """Remove the blob unless it was stored at or after ``cutoff``: one conditional delete,
        so a writer marking it meanwhile either goes first (it stays) or finds it gone (and
        writes it again)."""
        check_digest(digest)
        try:
            with self._engine.begin() as conn:
                gone = conn.execute(
                    delete(_BLOBS).where(_BLOBS.c.hash == digest, _BLOBS.c.created_at < cutoff)
                ).rowcount
                if gone:
                    conn.execute(delete(_CHUNKS).where(_CHUNKS.c.hash == digest))
        except SQLAlchemyError as exc:
            raise self._error(exc) from exc
        return bool(gone)

    def remove_leftovers(self, cutoff: datetime) -> int:
        """Remove spool files a crash left before ``cutoff`` (a blob's row and chunks commit
        together, so the database itself holds no half-written blob)."""
        return self.sweep_spool((utcnow() - cutoff).total_seconds())

    def close(self) -> None:
        """Dispose of the engine this store made (a shared one is its owner's)."""
        self._spool.close()
        if self._own_engine:
            self._engine.dispose()

    def _error(self, exc: BaseException) -> BlobStoreError:
        if isinstance(exc, BlobStoreError):
            return exc
        error = BlobStoreError(getattr(exc, "errno", None) or 0, f"blob database: {exc}")
        error.__cause__ = exc
        return error


def _read_chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


def _source(blob: Blob) -> tuple[str, int, Generator[bytes | memoryview, None, None]]:
    """A blob's digest, length and chunks (a spool file is opened only when they are read)."""
    if isinstance(blob, BlobFile):
        blob.close()
        return blob.digest, blob.size, _file_chunks(blob.path)
    pieces = blob if isinstance(blob, tuple) else (blob,)
    return hash_pieces(pieces), sum(len(p) for p in pieces), pieces_in_chunks(pieces, CHUNK_BYTES)


def _file_chunks(path: Path) -> Generator[bytes, None, None]:
    with path.open("rb") as stream:
        yield from _read_chunks(stream)
