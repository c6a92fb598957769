"""The status endpoint: ``GET /metrics`` (Prometheus) and ``GET /health``, on loopback by default.

A small asyncio HTTP/1.1 server in the service's own event loop rather than
prometheus_client's ``start_http_server`` (a wsgiref thread that knows nothing of our health
checks and is never stopped) or aiohttp (a web framework for two fixed GET routes). It answers
one request per connection and closes, which every scraper and ``curl`` handles; a request
line or header block that is too long or too slow is dropped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailledger.config import split_listen
from mailledger.logs import get_logger

log = get_logger(__name__)

_READ_TIMEOUT_SECONDS = 10.0
_MAX_HEADER_BYTES = 16 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Awaitable[Response]]


def json_response(status: int, data: object) -> Response:
    """A JSON body with its content type."""
    return Response(status, json.dumps(data).encode() + b"\n", "application/json")


class StatusServer:
    """Serves fixed GET routes (path → coroutine) on one address."""

    def __init__(self, listen: str, routes: dict[str, Route]) -> None:
        self.listen = listen
        self.routes = routes
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Bind (port 0 picks a free one) and return the bound address."""
        host, port = split_listen(self.listen)
        self._server = await asyncio.start_server(
            self._handle, host or None, port, reuse_address=True, limit=_MAX_HEADER_BYTES
        )
        name = self._server.sockets[0].getsockname()
        self.address = (str(name[0]), int(name[1]))
        log.info("status endpoint listening", address=f"{self.address[0]}:{self.address[1]}")
        return self.address

    async def stop(self) -> None:
        """Stop listening; requests in progress are cut off (they are cheap to repeat)."""
        if self._server is None:
            return
        self._server.close()
        # wait_closed waits for handlers too on 3.12+; a scrape takes milliseconds.
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await asyncio.wait_for(self._respond(reader), _READ_TIMEOUT_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            response = Response(400, b"bad request\n")
        except Exception:
            log.exception("status endpoint failed")
            response = Response(503, b"internal error\n")
        head = (
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode("ascii") + response.body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> Response:
        request_line = (await reader.readuntil(b"\r\n")).decode("latin-1").split()
        # Read (and ignore) the headers: GET requests carry nothing we use.
        while (await reader.readuntil(b"\r\n")) != b"\r\n":
            pass
        if len(request_line) != 3 or not request_line[2].startswith("HTTP/"):
            return Response(400, b"bad request\n")
        method, target = request_line[0], request_line[1].split("?", 1)[0]
        route = self.routes.get(target)
        if route is None:
            return Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return Response(405, b"GET only\n")
        return await route()
