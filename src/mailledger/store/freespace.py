"""The free-space guard: refuse new mail with 452 4.3.1 before the disk fills.

A blob write or an SQLite commit that runs out of space mid-way fails that one message; a
disk that is full fails everything, including the processing of mail already accepted. So
intake stops accepting while the file systems it writes to have less than ``[storage]
min_free_bytes`` free, and the sender keeps the message and retries (RFC 5321 §4.2.5: 452 is
"insufficient system storage", RFC 3463 4.3.1 "mail system full").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


@dataclass(frozen=True, slots=True)
class SpaceShortage:
    """Which file system is too full, and by how much."""

    path: str
    free_bytes: int
    needed_bytes: int

    def __str__(self) -> str:
        return f"{self.path}: {self.free_bytes} bytes free, {self.needed_bytes} needed"


def free_bytes(path: str | Path) -> int:
    """Bytes available to an unprivileged writer on the file system holding ``path``.

    A directory not created yet is measured on its nearest existing parent, where it will be.
    """
    where = Path(path).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    stats = os.statvfs(where)
    return stats.f_bavail * stats.f_frsize


def storage_paths(blob_dir: str | Path, database_url: str) -> list[Path]:
    """The places intake writes to: the blob directory and, for SQLite, the database's folder."""
    paths = [Path(blob_dir)]
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        paths.append(Path(url.database).parent)
    return paths


class FreeSpaceGuard:
    """Answers "is there room for this message?" for a set of paths."""

    def __init__(self, paths: Iterable[str | Path], min_free_bytes: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.min_free_bytes = min_free_bytes
        # Each path as the absolute string statvfs is asked about, once it exists: the check
        # runs twice per message (MAIL and DATA), and building the path cost more than statvfs.
        self._measured: dict[Path, str] = {}

    def shortage(self, incoming_bytes: int = 0) -> SpaceShortage | None:
        """The first path without room for ``incoming_bytes`` beyond the reserve, or None.

        A path that cannot be measured (missing mount, permission) is not reported here: the
        write itself then fails and the sender gets 451, which is the honest answer.
        """
        if self.min_free_bytes <= 0:
            return None
        needed = self.min_free_bytes + max(incoming_bytes, 0)
        for path in self.paths:
            try:
                free = self._free(path)
            except OSError:
                continue
            if free < needed:
                return SpaceShortage(str(path), free, needed)
        return None

    def _free(self, path: Path) -> int:
        """``free_bytes(path)``, asking statvfs directly once the path is known to exist."""
        where = self._measured.get(path)
        if where is not None:
            try:
                stats = os.statvfs(where)
            except OSError:
                del self._measured[path]  # removed or unmounted: measure it the long way
            else:
                return stats.f_bavail * stats.f_frsize
        free = free_bytes(path)
        if path.is_dir():
            self._measured[path] = str(path.absolute())
        return free
