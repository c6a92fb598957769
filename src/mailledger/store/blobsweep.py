"""``storage sweep``: remove stored bytes that no row names, once nobody has stored them for days.

Bytes are made durable before the row naming them commits (DESIGN §9), so some are never
named: the stamped copy and the attachments of a message that ends quarantined, and whatever a
crash or a failed commit left between a blob's fsync and its row. Nothing else ever removes
them. A blob goes only when all of this holds:

- no writer has stored it for ``older_than`` (at least a day): writers mark a blob they find
  already there (its mtime, or ``created_at`` in the database), so bytes about to be named by a
  row still being written are young;
- none of ``quarantine.BLOB_REFERENCES`` names it, asked in one statement (one snapshot);
- the backend removes it only if it was still not stored since then, in a step no writer can
  slip into (``remove_if_not_stored_since``); a writer coming later writes it again.

S3 has no such conditional delete, so its sweep is refused rather than racing a writer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, union
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.blobbackend import BlobBackend, SweepableBackend
from mailledger.store.engine import reading
from mailledger.store.models import utcnow
from mailledger.store.quarantine import BLOB_REFERENCES

# Less than this and a message still being received or processed could lose its bytes.
MIN_AGE = timedelta(days=1)
DEFAULT_AGE = timedelta(days=7)
PAGE = 500  # digests checked against the database at once


class SweepRefusedError(ValueError):
    """The sweep cannot run as asked (too short an age, a backend without a safe delete)."""


@dataclass(slots=True)
class SweepReport:
    """What one sweep found and did (in a dry run: what it would remove)."""

    cutoff: datetime
    dry_run: bool = False
    old: int = 0  # blobs not stored since the cutoff
    named: int = 0  # of those, still named by a row: kept
    removed: int = 0  # unnamed and removed (a dry run: would be)
    stored_again: int = 0  # unnamed, but a writer stored them again meanwhile: kept
    leftovers: int = 0  # half-written files of a crash, removed

    def summary(self) -> str:
        """One line for the operator."""
        verb = "would remove" if self.dry_run else "removed"
        line = (
            f"{self.old} blob(s) not stored since {self.cutoff:%Y-%m-%d %H:%M} UTC: "
            f"{self.named} still named by a message, activity, attachment or outbound row "
            f"(kept), {verb} {self.removed} nothing names"
        )
        if self.stored_again:
            line += f", kept {self.stored_again} stored again meanwhile"
        if not self.dry_run:
            line += f"; {self.leftovers} leftover temporary file(s) of a crash removed"
        return line


def sweepable(blobs: BlobBackend) -> SweepableBackend:
    """``blobs`` if it can be swept safely; SweepRefusedError with what to do otherwise."""
    if not isinstance(blobs, SweepableBackend):
        raise SweepRefusedError(
            f"[storage] backend {blobs.name!r} cannot remove an object only if no writer "
            "stored it meanwhile, so sweeping it could remove bytes a message is about to "
            "name; move the blobs with `mailledger storage migrate --to database` to sweep them"
        )
    return blobs


def sweep_unreferenced(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    older_than: timedelta = DEFAULT_AGE,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> SweepReport:
    """Remove the blobs no row names and nobody stored for ``older_than``; what was done."""
    if older_than < MIN_AGE:
        raise SweepRefusedError(
            f"older than {older_than} is too recent: bytes stored for a message still being "
            f"received or processed are named only when it commits; use at least {MIN_AGE.days} day"
        )
    store = sweepable(blobs)
    cutoff = (now or utcnow()) - older_than
    report = SweepReport(cutoff, dry_run)
    for page in _pages(store.stored_before(cutoff)):
        report.old += len(page)
        with reading(sessions) as session:
            named = named_among(session, page)
        report.named += len(named)
        for digest in page:
            if digest in named:
                continue
            if dry_run or store.remove_if_not_stored_since(digest, cutoff):
                report.removed += 1
            else:
                report.stored_again += 1
    if not dry_run:
        report.leftovers = store.remove_leftovers(cutoff)
    return report


def named_among(session: Session, digests: Iterable[str]) -> set[str]:
    """Which of ``digests`` some row names, in one statement (one snapshot of the database)."""
    wanted = list(digests)
    if not wanted:
        return set()
    found = union(*(select(column).where(column.in_(wanted)) for column in BLOB_REFERENCES))
    return set(session.scalars(select(found.subquery().c[0])))


def _pages(digests: Iterator[str]) -> Iterator[list[str]]:
    while page := list(itertools.islice(digests, PAGE)):
        yield page
