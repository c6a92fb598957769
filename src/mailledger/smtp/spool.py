"""A large DATA written to the blob store's disk as it arrives, not held in memory.

Up to ``SPOOL_BYTES`` a message stays in memory, as before. Past that, what has arrived is
written to a ``BlobFile`` and every later run of lines follows it, dot-unstuffed on the way:
the listener holds a run at a time, where a 10 MB message used to take about 20 MB (the runs
and their joined copy). What the DATA-time checks need is kept on the way: the first bytes
(about the threshold; the header checks read further from the file when the allowed header
section is larger), the counts of CR, LF and CRLF, and whether a NUL came (``screening``).
Intake then fsyncs and renames the file instead of writing the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailledger.store.blobs import BlobFile

SPOOL_BYTES = 1024 * 1024
CRLF = b"\r\n"


def unstuff(run: bytes) -> bytes:
    """Dot-stuffing removed (RFC 5321 §4.5.2) from lines that start at the run's start."""
    start = 1 if run.startswith(b".") else 0
    return run[start:].replace(b"\r\n.", CRLF) if start else run.replace(b"\r\n.", CRLF)


@dataclass
class SpooledMessage:
    """A message on disk (``file``), with what the DATA checks read of it."""

    file: BlobFile
    head: bytes  # the first bytes of the message, about the spool threshold
    crlf: int = 0
    lf: int = 0
    cr: int = 0
    nul: bool = False

    def __len__(self) -> int:
        return self.file.size

    def add(self, text: bytes) -> None:
        """Write unstuffed text (whole lines) and count what the checks need."""
        self.file.write(text)
        self.crlf += text.count(CRLF)
        self.lf += text.count(b"\n")
        self.cr += text.count(b"\r")
        self.nul = self.nul or b"\0" in text

    def first_bytes(self, count: int) -> bytes:
        """The message's first ``count`` bytes (or all of it): from ``head``, or the file."""
        if len(self.head) >= count or len(self.head) == len(self):
            return self.head[:count]
        with self.file.path.open("rb") as stream:
            return stream.read(count)

    def discard(self) -> None:
        """Remove the file unless intake stored it."""
        self.file.discard()


def start_spool(file: BlobFile, head: bytes) -> SpooledMessage:
    """A spooled message whose first bytes (unstuffed) are ``head``."""
    spooled = SpooledMessage(file, head)
    spooled.add(head)
    return spooled
