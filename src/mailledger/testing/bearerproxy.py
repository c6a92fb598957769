"""A CalDAV front door that takes OAuth bearer tokens, as Google's CalDAV endpoint does.

Radicale logs users in with passwords only. This loopback proxy stands where Google's
``apidata.googleusercontent.com`` would: every request must carry ``Authorization: Bearer
TOKEN``, and the token is checked for real, by asking the OAuth provider's introspection
endpoint (RFC 7662, :mod:`mailledger.testing.oauthserver`) whether it is live and whose it
is. A live token for a known user is forwarded to Radicale with that user's Basic
credentials; anything else is ``401`` with ``WWW-Authenticate: Bearer error="invalid_token"``
(RFC 6750 §3) and never reaches Radicale. ``requests`` records what arrived: the method,
the path, and whether the token was accepted.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

# Hop-by-hop headers (RFC 9110 §7.6.1) and ones the proxy sets itself.
_NOT_FORWARDED = frozenset(
    {"authorization", "connection", "keep-alive", "transfer-encoding", "host", "content-length"}
)


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """One request the proxy received."""

    method: str
    path: str
    accepted: bool


@dataclass
class BearerProxy:
    """Forwards to ``upstream`` (Radicale's base URL) the requests whose token is live.

    ``users`` maps the user the provider names (introspection's ``email``) to the Radicale
    user and password to forward as.
    """

    upstream: str
    introspection_url: str
    users: dict[str, tuple[str, str]]
    requests: list[ProxiedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a thread."""
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base address, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def accepted(self) -> list[ProxiedRequest]:
        """The requests forwarded to Radicale."""
        with self._lock:
            return [r for r in self.requests if r.accepted]

    def record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def user_of(self, token: str) -> tuple[str, str] | None:
        """Radicale's user and password for a live token, asking the provider (RFC 7662)."""
        form = urllib.parse.urlencode({"token": token}).encode()
        asked = urllib.request.Request(  # noqa: S310 - the loopback provider
            self.introspection_url, data=form, method="POST"
        )
        with urllib.request.urlopen(asked, timeout=30) as answer:  # noqa: S310
            found: Any = json.loads(answer.read())
        if not isinstance(found, dict) or found.get("active") is not True:
            return None
        return self.users.get(str(found.get("email", "")))


class _Handler(BaseHTTPRequestHandler):
    proxy: BearerProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test reads ``requests``."""

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in _NOT_FORWARDED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self) -> None:
        """Check the bearer token, then forward as the user it belongs to (or refuse)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        header = self.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        user = self.proxy.user_of(token) if token else None
        self.proxy.record(ProxiedRequest(self.command, self.path, user is not None))
        if user is None:
            self._answer(
                401,
                [("WWW-Authenticate", 'Bearer error="invalid_token"')],
                b"a live OAuth access token is needed",
            )
            return
        basic = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode("ascii")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
        forwarded = urllib.request.Request(  # noqa: S310 - loopback Radicale
            self.proxy.upstream.rstrip("/") + self.path,
            data=body if body or self.command in ("PUT", "POST") else None,
            method=self.command,
            headers=headers | {"Authorization": f"Basic {basic}"},
        )
        try:
            with urllib.request.urlopen(forwarded, timeout=60) as answer:  # noqa: S310
                self._answer(answer.status, list(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as failed:
            self._answer(failed.code, list(failed.headers.items()), failed.read())


# http.server calls do_METHOD: every method a CalDAV client sends goes the same way.
for _method in (
    "GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE",
    "PROPFIND", "PROPPATCH", "REPORT", "MKCALENDAR", "MKCOL",
):  # fmt: skip
    setattr(_Handler, f"do_{_method}", _Handler.handle_any)
