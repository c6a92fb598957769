"""A raw SMTP client for steps smtplib will not take: bare line ends, half a DATA, idling.

Every byte sent is exactly what the test wrote, so a test can send what a hostile client
would, and read each reply line, or the server closing the connection, as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib

REPLY_TIMEOUT_SECONDS = 10.0


class Dialogue:
    """One connection to an SMTP server, read and written a line at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Dialogue:
        """Connect; the 220 banner is left for the test to read."""
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def reply(self, within: float = REPLY_TIMEOUT_SECONDS) -> str:
        """The last line of the next reply (multi-line replies read to the end), waiting at
        most ``within`` seconds for each line; "" means the server closed the connection."""
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), within)
            if not raw:
                return ""
            line = raw.decode("utf-8", "replace")
            if len(line) < 4 or line[3] != "-":
                return line.rstrip("\r\n")

    async def send(self, raw: bytes) -> None:
        """Write exactly these bytes: no line end is added or changed."""
        self.writer.write(raw)
        await self.writer.drain()

    async def say(self, line: bytes) -> str:
        """Send one command line with CRLF and return the last line of its reply."""
        await self.send(line + b"\r\n")
        return await self.reply()

    async def closed_by_server(self, within: float = REPLY_TIMEOUT_SECONDS) -> bool:
        """Whether the server closes the connection, with nothing more to read, in time."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), within)
        except TimeoutError:
            return False
        return rest == b""

    async def close(self) -> None:
        """Close our side; a server that already closed is fine."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
