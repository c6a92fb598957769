"""Making a directory's entries durable: a file's new name survives a crash only once its
directory is fsynced too (a rename or creation is a change to the directory)."""

from __future__ import annotations

import os


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` itself, so the names made or renamed in it are on disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
