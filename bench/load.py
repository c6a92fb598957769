"""The load: N concurrent SMTP sessions, each sending messages back to back on one connection.

A plain asyncio client, so the client's own cost stays small and the same for both servers.
Each message is timed from the last byte of DATA (the CRLF.CRLF) to the server's reply.
With a ``rate``, message i starts no sooner than i/rate seconds in: the sessions offer that
rate instead of as much as the server takes (latency at a given load, not at overload).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from bench.world import HELO, Mail
from mailledger.testing.smtp import dot_stuff


@dataclass
class Sent:
    """One message's outcome as the client saw it."""

    reply: str
    data_to_reply: float  # seconds from the end of DATA to the reply
    replied_at: float  # wall clock (time.time) of the reply


@dataclass
class LoadResult:
    """Everything the sessions sent, and over how long."""

    sent: list[Sent] = field(default_factory=list)
    seconds: float = 0.0
    started_at: float = 0.0  # wall clock

    @property
    def accepted(self) -> list[Sent]:
        """Messages answered 250."""
        return [s for s in self.sent if s.reply.startswith("250")]


async def _reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = (await reader.readline()).decode("ascii", "replace")
        if not line:
            raise ConnectionError("server closed the connection")
        lines.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            return "\n".join(lines)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    writer.write(line.encode("ascii") + b"\r\n")
    return await _reply(reader)


async def _session(
    port: int,
    rcpt: str,
    work: list[tuple[str, bytes]],
    result: LoadResult,
    *,
    source: str,
    pace: tuple[Iterator[int], float, float] | None,
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), limit=1 << 20
    )
    try:
        await _reply(reader)
        await _command(reader, writer, f"EHLO {HELO}")
        while work:
            mail_from, stuffed = work.pop()
            if pace is not None:
                slots, begun, rate = pace
                await asyncio.sleep(max(0.0, begun + next(slots) / rate - time.perf_counter()))
            for line in (f"MAIL FROM:<{mail_from}> SIZE={len(stuffed)}", f"RCPT TO:<{rcpt}>"):
                reply = await _command(reader, writer, line)
                if not reply.startswith("250"):
                    raise RuntimeError(f"{line!r} refused: {reply}")
            reply = await _command(reader, writer, "DATA")
            if not reply.startswith("354"):
                raise RuntimeError(f"DATA refused: {reply}")
            writer.write(stuffed)  # ends with CRLF.CRLF
            await writer.drain()
            ended = time.perf_counter()
            reply = await _reply(reader)
            result.sent.append(Sent(reply, time.perf_counter() - ended, time.time()))
        await _command(reader, writer, "QUIT")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def prepare(mails: list[Mail]) -> list[tuple[str, bytes]]:
    """Dot-stuffed, terminated bytes, ready to write (done before the clock starts)."""
    return [(mail.mail_from, dot_stuff(mail.data)) for mail in mails]


async def run_load(
    port: int,
    rcpt: str,
    work: list[tuple[str, bytes]],
    sessions: int,
    source: str,
    *,
    rate: float | None = None,
) -> LoadResult:
    """Send every message over ``sessions`` concurrent connections from ``source``."""
    queue = list(reversed(work))
    result = LoadResult(started_at=time.time())
    begun = time.perf_counter()
    pace = None if rate is None else (itertools.count(), begun, rate)
    await asyncio.gather(
        *(
            _session(port, rcpt, queue, result, source=source, pace=pace)
            for _ in range(min(sessions, len(work)))
        )
    )
    result.seconds = time.perf_counter() - begun
    return result
