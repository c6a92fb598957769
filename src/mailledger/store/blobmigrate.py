"""Copy every blob from one backend to another, verified by its hash: ``storage migrate``.

The copy runs while nodes keep serving from the source: blobs are content-addressed and never
change, so a blob copied once stays right, and a pass that finds new ones (mail that arrived
meanwhile) is followed by another until one finds nothing new. Each copy is checked twice: the
target stores it only if the bytes read hash to its name, and it is then read back from the
target and hashed again. A blob already in the target is read back and checked the same way,
so running the command again resumes where an interrupted run stopped and repairs a bad copy.

Source blobs are removed only when asked, only after every blob of the source was verified in
the target, and only by a run whose configuration names the target already (so no node still
reads the source).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mailledger.store.blobbackend import BlobBackend, hash_file
from mailledger.store.blobs import BlobStoreError

# Passes over the source before giving up on catching up with arriving mail.
MAX_PASSES = 10


@dataclass(slots=True)
class MigrationReport:
    """What a migration did; ``failed`` maps a digest to why it could not be copied."""

    copied: int = 0
    already: int = 0  # found in the target and verified there
    removed: int = 0  # removed from the source afterwards
    bytes_copied: int = 0
    passes: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def verified(self) -> int:
        """Blobs known good in the target."""
        return self.copied + self.already

    def __str__(self) -> str:
        text = (
            f"{self.verified} blobs verified in the target ({self.copied} copied, "
            f"{_megabytes(self.bytes_copied)}; {self.already} already there) in "
            f"{self.passes} pass(es)"
        )
        if self.removed:
            text += f"; {self.removed} removed from the source"
        if self.failed:
            text += f"; {len(self.failed)} FAILED"
        return text


Progress = Callable[[MigrationReport, str], None]


def migrate_blobs(
    source: BlobBackend,
    target: BlobBackend,
    *,
    remove_source: bool = False,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy and verify every blob of ``source`` into ``target``; then remove the source's if
    asked and nothing failed. ``progress(report, digest)`` is called after each blob."""
    report = MigrationReport()
    done: set[str] = set()
    while report.passes < MAX_PASSES:
        report.passes += 1
        new = 0
        for digest in source.digests():
            if digest in done or digest in report.failed:
                continue
            new += 1
            _one(source, target, digest, report)
            if digest not in report.failed:
                done.add(digest)
            if progress is not None:
                progress(report, digest)
        if new == 0:
            break
    if remove_source and not report.failed:
        for digest in sorted(done):
            source.delete(digest)
            report.removed += 1
    return report


def _one(source: BlobBackend, target: BlobBackend, digest: str, report: MigrationReport) -> None:
    try:
        if target.exists(digest):
            if _verified(target, digest):
                report.already += 1
                return
            target.delete(digest)  # a bad copy: copied again below
        with source.open(digest) as stream:
            target.put_verified(digest, stream)
        if not _verified(target, digest):
            report.failed[digest] = "the copy in the target does not hash to its name"
            return
        report.copied += 1
        report.bytes_copied += target.size(digest)
    except (BlobStoreError, OSError, ValueError) as exc:
        report.failed[digest] = str(exc)


def _verified(backend: BlobBackend, digest: str) -> bool:
    """Whether the stored bytes hash to ``digest`` (read back in pieces)."""
    try:
        with backend.open(digest) as stream:
            return hash_file(stream) == digest
    except BlobStoreError:
        return False


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"
