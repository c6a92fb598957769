"""Content-addressed blob store for raw messages and attachments.

A blob is written to a temporary name, fsynced, renamed to its SHA-256, and the directory is
fsynced, so once ``put`` returns the bytes survive a crash or power loss (DESIGN §9).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class BlobStoreError(OSError):
    """The blob store cannot take or give bytes (full, read-only, missing)."""


class BlobStore:
    """A directory of files named by their SHA-256, fanned out by the first two hex digits."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives."""
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a SHA-256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` durably and return its digest; storing the same bytes twice is free."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                Path(tmp).replace(target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_dir(target.parent)
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"blob store {self.root}: {exc.strerror}") from exc
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes of a stored blob."""
        try:
            return self.path(digest).read_bytes()
        except OSError as exc:
            raise BlobStoreError(exc.errno, f"blob {digest}: {exc.strerror}") from exc

    def delete(self, digest: str) -> None:
        """Remove a blob (retention, quarantine delete); a missing blob is not an error."""
        self.path(digest).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
