"""The health check: can this node store mail right now?

A node is healthy when a message arriving now would be stored: the database answers, and the
blob directory takes a small fsynced write with the free-space reserve left over (and the
backend answers a lookup: the database, S3, or the small-blob file in the directory). Each
check writes or reads for real (a directory that exists but turned read-only, or a database
that accepts connections but not queries, must fail), within a time budget, since a check
that hangs tells a load balancer nothing.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.freespace import FreeSpaceGuard

CHECK_TIMEOUT_SECONDS = 5.0


@dataclass(slots=True)
class Health:
    """The outcome of one health check: ok, and what failed in words."""

    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """The JSON body of ``/health``."""
        checks = {name: self.problems.get(name, "ok") for name in ("database", "blob_store")}
        return {"status": "ok" if self.ok else "fail", "checks": checks}


def check_database(sessions: sessionmaker[Session]) -> None:
    """Raise unless the database answers a query that reads a table.

    A reader: the write lock could be held for a while under load, and health must not wait.
    """
    with reading(sessions) as session:
        session.execute(text("SELECT count(*) FROM tenants")).scalar_one()


def check_blob_dir(blob_dir: str | Path, guard: FreeSpaceGuard | None = None) -> None:
    """Raise unless a small file can be written, fsynced and removed in the blob directory."""
    root = Path(blob_dir)
    root.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".health-", dir=root)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        Path(name).unlink(missing_ok=True)
    if guard is not None and (shortage := guard.shortage()) is not None:
        raise OSError(f"below the free-space reserve: {shortage}")


def check_blob_store(
    blob_dir: str | Path, guard: FreeSpaceGuard | None = None, blobs: BlobBackend | None = None
) -> None:
    """``check_blob_dir``, and one lookup in the backend: a round trip to the database or
    S3, a read of the filesystem's small-blob file (a damaged one fails it)."""
    check_blob_dir(blob_dir, guard)
    if blobs is not None:
        blobs.exists(PROBE_DIGEST)  # answers False when reachable; raises when not


# The digest the probe asks about: any well-formed name will do.
PROBE_DIGEST = "0" * 64


async def check(
    sessions: sessionmaker[Session],
    blob_dir: str | Path,
    guard: FreeSpaceGuard | None = None,
    *,
    blobs: BlobBackend | None = None,
    timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
) -> Health:
    """Run both checks concurrently, off the event loop, each within ``timeout_seconds``."""

    async def run(name: str, func: Callable[..., None], *args: object) -> tuple[str, str | None]:
        try:
            await asyncio.wait_for(asyncio.to_thread(func, *args), timeout_seconds)
        except TimeoutError:
            return name, f"no answer within {timeout_seconds:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure is the answer
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            return name, f"{type(exc).__name__}: {first_line}"[:300]
        return name, None

    results = await asyncio.gather(
        run("database", check_database, sessions),
        run("blob_store", check_blob_store, blob_dir, guard, blobs),
    )
    return Health({name: problem for name, problem in results if problem is not None})
