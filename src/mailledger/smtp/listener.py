"""The capture listener: asyncio servers for every ``capture.listen`` address.

The servers run in the caller's event loop (not aiosmtpd's threaded Controller), so the whole
service is one loop that tests can drive and that stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

from mailledger.config import Settings, split_listen
from mailledger.logs import get_logger
from mailledger.smtp.protocol import CaptureSMTP, SessionGate
from mailledger.store.blobs import BlobFile

log = get_logger(__name__)

# How long closed sessions get to run their connection_lost before stop returns.
_CLOSE_SECONDS = 2.0


class CaptureListener:
    """Accepts SMTP connections for the capture domains, up to ``capture.max_sessions``."""

    def __init__(
        self,
        settings: Settings,
        handler: object,
        *,
        tls_context: ssl.SSLContext | None = None,
        spool: Callable[[], BlobFile] | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``handler`` is the aiosmtpd handler object (STYLE: one seam); ``spool`` starts a blob
        file, so large messages go to disk as they arrive; ``reuse_port`` binds with
        SO_REUSEPORT, so several processes accept on one port (``[service]
        listener_processes``) and the kernel spreads new connections over them."""
        self._settings = settings
        self._reuse_port = reuse_port
        self._handler = handler
        self._tls_context = tls_context
        self._spool = spool
        self.gate = SessionGate(settings.capture.max_sessions)
        self._servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []

    def _protocol(self) -> CaptureSMTP:
        return CaptureSMTP(
            self._handler,
            settings=self._settings,
            gate=self.gate,
            tls_context=self._tls_context,
            loop=asyncio.get_running_loop(),
            spool=self._spool,
        )

    async def start(self) -> list[tuple[str, int]]:
        """Bind every listen address (port 0 picks a free port) and return what was bound."""
        loop = asyncio.get_running_loop()
        try:
            for value in self._settings.capture.listen:
                host, port = split_listen(value)
                server = await loop.create_server(
                    self._protocol,
                    host or None,
                    port,
                    reuse_address=True,
                    reuse_port=self._reuse_port or None,
                )
                self._servers.append(server)
                for sock in server.sockets:
                    name = sock.getsockname()
                    self.addresses.append((str(name[0]), int(name[1])))
        except OSError:
            await self._close_servers()
            raise
        log.info("capture listener started", addresses=self.addresses)
        return list(self.addresses)

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop: new sessions get 421, idle ones are closed, a DATA in progress may finish.

        Sessions still in DATA when the grace runs out are cut off; their senders never got
        250, so they keep the message and retry (RFC 5321 §4.5.4.1).
        """
        self.gate.stopping = True
        deadline = time.monotonic() + grace_seconds
        for session in list(self.gate.sessions):
            if not session.in_data:
                session.shut_down()
        while self.gate.in_data and time.monotonic() < deadline:
            await self.gate.wait_changed(deadline - time.monotonic())
        for session in list(self.gate.sessions):
            session.shut_down()
        await self._close_servers()
        # Let the closed connections run their connection_lost before the loop moves on.
        closing_deadline = time.monotonic() + _CLOSE_SECONDS
        while self.gate.sessions and time.monotonic() < closing_deadline:
            await self.gate.wait_changed(closing_deadline - time.monotonic())
        log.info("capture listener stopped")

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
