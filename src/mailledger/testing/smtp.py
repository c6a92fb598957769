"""Running the real capture server in a test's event loop, and talking SMTP to it.

``smtplib`` blocks, so the async helpers run it in a thread: the server under test shares the
test's event loop and must keep running while the client waits. Messages are sent as raw bytes
(only dot-stuffed): ``smtplib.SMTP.data`` would silently turn a bare LF into CRLF, and tests
of the capture listener must be able to send exactly what a hostile client would.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from mailledger.config import Settings
from mailledger.service.server import serve

Reply = tuple[int, str]

# A line starting with "." gets another (RFC 5321 §4.5.2). Only lines that start after CRLF
# are lines to the server: a dot after a bare LF is mid-line for it.
_DOT_AT_LINE_START = re.compile(rb"(?:^|(?<=\r\n))\.")


def dot_stuff(data: bytes) -> bytes:
    """The DATA payload for ``data``, terminated: dots doubled at line starts, then CRLF.CRLF."""
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _DOT_AT_LINE_START.sub(b"..", data) + b".\r\n"


@dataclass
class Transaction:
    """Every reply of one SMTP dialogue, for assertions."""

    banner: Reply = (0, "")
    ehlo: Reply = (0, "")
    esmtp_features: dict[str, str] = field(default_factory=dict)
    mail: Reply = (0, "")
    rcpt: list[Reply] = field(default_factory=list)
    data: Reply | None = None

    @property
    def accepted(self) -> bool:
        """Whether the message got its 250 after DATA."""
        return self.data is not None and self.data[0] == 250


class _Client(smtplib.SMTP):
    """smtplib's client; ``connect`` remembers the host, which ``starttls`` needs for SNI."""

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> tuple[int, bytes]:
        self._host = host
        return super().connect(host, port, source_address)


def _reply(code: int, message: bytes | str) -> Reply:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return code, text


def send_raw(
    port: int,
    mail_from: str,
    rcpt_to: Sequence[str],
    data: bytes,
    *,
    host: str = "127.0.0.1",
    source_address: str | None = None,
    mail_options: Sequence[str] = (),
    helo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    io_timeout: float = 30.0,
) -> Transaction:
    """One SMTP transaction with exactly these bytes; stops at the first refused step.

    ``source_address`` binds the client to another loopback address (127.0.0.x), to test
    per-peer behaviour; ``starttls`` upgrades the session with that client context first.
    Every reply is recorded; nothing is raised for a refusal.
    """
    result = Transaction()
    source = (source_address, 0) if source_address else None
    client = _Client(timeout=io_timeout, source_address=source)
    try:
        result.banner = _reply(*client.connect(host, port))
        result.ehlo = _reply(*client.ehlo(helo))
        if starttls is not None:
            client.starttls(context=starttls)
            result.ehlo = _reply(*client.ehlo(helo))
        result.esmtp_features = dict(client.esmtp_features)
        result.mail = _reply(*client.mail(mail_from, list(mail_options)))
        if result.mail[0] != 250:
            return result
        for rcpt in rcpt_to:
            result.rcpt.append(_reply(*client.rcpt(rcpt)))
        if not any(code == 250 for code, _ in result.rcpt):
            return result
        client.putcmd("data")
        code, message = client.getreply()
        if code != 354:
            result.data = _reply(code, message)
            return result
        client.send(dot_stuff(data))
        result.data = _reply(*client.getreply())
        return result
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


async def send_raw_async(
    port: int,
    mail_from: str,
    rcpt_to: Sequence[str],
    data: bytes,
    *,
    host: str = "127.0.0.1",
    source_address: str | None = None,
    mail_options: Sequence[str] = (),
    helo: str = "client.test",
    starttls: ssl.SSLContext | None = None,
    io_timeout: float = 30.0,
) -> Transaction:
    """``send_raw`` in a thread, so a server in this event loop can answer meanwhile."""
    return await asyncio.to_thread(
        send_raw,
        port,
        mail_from,
        rcpt_to,
        data,
        host=host,
        source_address=source_address,
        mail_options=mail_options,
        helo=helo,
        starttls=starttls,
        io_timeout=io_timeout,
    )


def on_loopback_port_zero(settings: Settings) -> Settings:
    """The same settings with the capture listener on 127.0.0.1, port chosen by the kernel."""
    capture = settings.capture.model_copy(update={"listen": ["127.0.0.1:0"]})
    return settings.model_copy(update={"capture": capture})


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[int]:
    """Run ``serve`` in this event loop on 127.0.0.1 port 0 and yield the bound port.

    The schema must already exist (the tests' ``engine`` fixture creates it). On exit the
    server is stopped the way SIGTERM stops it, and any failure of the server is raised.
    """
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()

    def ready(addresses: list[tuple[str, int]]) -> None:
        if not bound.done():
            bound.set_result(addresses)

    task = asyncio.create_task(serve(on_loopback_port_zero(settings), ready=ready, stop=stop))
    waiters: set[asyncio.Future[Any]] = {task, bound}
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what stopped it
        raise RuntimeError("the server stopped before it was ready")
    try:
        yield bound.result()[0][1]
    finally:
        stop.set()
        await task
