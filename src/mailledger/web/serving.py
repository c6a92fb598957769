"""The API on a socket: uvicorn's Server driven from serve()'s own event loop.

``uvicorn.Server.serve`` installs SIGINT/SIGTERM handlers of its own and ends the process's
story there; serve() already owns the signals and the stop order. So this uses the parts
``serve`` is made of: ``startup`` on a socket we bind (port 0 works, and the bound port is
read back), ``main_loop`` as a task (it refreshes the Date header and watches
``should_exit``), and ``shutdown``, which stops accepting, lets requests in flight finish
within the grace, then closes.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from starlette.types import ASGIApp

from mailledger.config import split_listen
from mailledger.logs import get_logger

log = get_logger("mailledger.web.serving")


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (IPv6 hosts in brackets)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)
    sock.setblocking(False)
    return sock


class HTTPServer:
    """One HTTP listener for ``app``, started and stopped by serve()."""

    def __init__(
        self,
        app: ASGIApp,
        listen: str,
        *,
        trusted_proxies: list[str],
        grace_seconds: float,
    ) -> None:
        self.listen = listen
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            # Our logging is configured once (logs.py); uvicorn must not replace it.
            log_config=None,
            access_log=False,
            server_header=False,
            # X-Forwarded-For/-Proto are believed only from these peers (the TLS proxy).
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies) or None,
            timeout_graceful_shutdown=max(1, round(grace_seconds)),
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind and start accepting; returns the bound (host, port)."""
        if not self._config.loaded:
            self._config.load()
        # As Server._serve does before startup ("off": LifespanOff, which does nothing).
        self._server.lifespan = self._config.lifespan_class(self._config)
        self._socket = bind(self.listen)
        try:
            await self._server.startup(sockets=[self._socket])
        except BaseException:
            self._socket.close()
            raise
        self._loop_task = asyncio.create_task(self._server.main_loop(), name="mailledger-http")
        host, port = self._socket.getsockname()[:2]
        log.info("http listening", address=f"{host}:{port}")
        return host, port

    async def stop(self) -> None:
        """Stop accepting; requests in flight finish within the grace, then it closes."""
        if self._loop_task is None:
            return
        self._server.should_exit = True
        await self._loop_task
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._loop_task = None
