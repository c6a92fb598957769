"""Blobs a batch writes, stored together: their fsyncs side by side instead of one by one.

Processing a message writes a blob or two (the stamped copy, each attachment), and each
``put`` waits for its own fsyncs: a file's and its directory's. A worker processing a claimed
batch waited on those one after another, with the CPU idle meanwhile (`make bench`). A
:class:`DeferredBlobs` hands out each blob's digest at once and keeps the bytes; ``flush``
stores every kept blob with one ``put_many``, whose fsyncs run at the same time and share the
filesystem's journal commits. The caller flushes before it commits any row naming those
digests, so a committed row still always names a durable blob (DESIGN §3). Reads of a blob
that is kept but not yet flushed are served from memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, BinaryIO

from mailledger.store.blobbackend import BlobBackend, hash_pieces
from mailledger.store.blobs import SPOOL_MAX_AGE_SECONDS, Blob, BlobFile, BlobStoreError

if TYPE_CHECKING:
    from pathlib import Path

Pieces = tuple[bytes | memoryview, ...]


class DeferredBlobs:
    """A :class:`BlobBackend` whose ``put`` and ``put_pieces`` wait for ``flush``.

    Everything else goes straight to the backend it wraps.
    """

    def __init__(self, backend: BlobBackend) -> None:
        self._backend = backend
        self._kept: dict[str, Pieces] = {}

    @property
    def root(self) -> Path:
        """The wrapped backend's local directory."""
        return self._backend.root

    @property
    def name(self) -> str:
        """The wrapped backend's name."""
        return self._backend.name

    @property
    def waiting(self) -> int:
        """How many blobs wait for ``flush``."""
        return len(self._kept)

    def put(self, data: bytes) -> str:
        """The digest of ``data``, stored at the next ``flush``."""
        return self.put_pieces((data,))

    def put_pieces(self, pieces: tuple[bytes | memoryview, ...]) -> str:
        """The digest of the pieces one after another, stored at the next ``flush``."""
        digest = hash_pieces(pieces)
        self._kept.setdefault(digest, tuple(pieces))
        return digest

    def flush(self) -> None:
        """Store every kept blob durably; a BlobStoreError if any of them could not be."""
        if not self._kept:
            return
        kept, self._kept = self._kept, {}
        outcomes = self._backend.put_many(list(kept.values()))
        for digest, outcome in zip(kept, outcomes, strict=True):
            if isinstance(outcome, BlobStoreError):
                raise outcome
            if outcome != digest:
                raise BlobStoreError(f"blob stored as {outcome}, expected {digest}")

    def put_many(self, blobs: Sequence[Blob]) -> list[str | BlobStoreError]:
        """Stored now, as the wrapped backend does (spooled files cannot wait in memory)."""
        return self._backend.put_many(blobs)

    def put_verified(self, digest: str, stream: BinaryIO) -> None:
        """Copied in now, as the wrapped backend does."""
        self._backend.put_verified(digest, stream)

    def new_file(self) -> BlobFile:
        """A spool file of the wrapped backend."""
        return self._backend.new_file()

    def sweep_spool(self, max_age_seconds: float = SPOOL_MAX_AGE_SECONDS) -> int:
        """The wrapped backend's sweep."""
        return self._backend.sweep_spool(max_age_seconds)

    def get(self, digest: str) -> bytes:
        """A blob's bytes, kept or stored."""
        kept = self._kept.get(digest)
        if kept is not None:
            return b"".join(kept)
        return self._backend.get(digest)

    def open(self, digest: str) -> AbstractContextManager[BinaryIO]:
        """A blob to read, kept or stored."""
        kept = self._kept.get(digest)
        if kept is not None:
            stream: BinaryIO = io.BytesIO(b"".join(kept))
            return nullcontext(stream)
        return self._backend.open(digest)

    def exists(self, digest: str) -> bool:
        """Whether the blob is kept or stored."""
        return digest in self._kept or self._backend.exists(digest)

    def size(self, digest: str) -> int:
        """A blob's length, kept or stored."""
        kept = self._kept.get(digest)
        if kept is not None:
            return sum(len(piece) for piece in kept)
        return self._backend.size(digest)

    def delete(self, digest: str) -> None:
        """Forget a kept blob, and delete it from the backend."""
        self._kept.pop(digest, None)
        self._backend.delete(digest)

    def digests(self) -> Iterator[str]:
        """The stored blobs' digests (kept ones are not stored yet)."""
        return self._backend.digests()

    def close(self) -> None:
        """Nothing of its own: the wrapped backend is its owner's to close."""
