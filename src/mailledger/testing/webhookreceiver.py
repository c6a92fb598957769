"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 that records every request.

It stands in for a tenant's CRM. Each path answers ``200`` unless the test scripts other
answers for it (a ``500``, a ``429`` with ``Retry-After``, a redirect, a ``410``), one per
request in order; ``hold_seconds`` keeps every answer back for a while, so a test can kill
the sender while a request is in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


@dataclass(frozen=True, slots=True)
class Answer:
    """What the receiver answers to one request."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_seconds: float = 0.0  # before answering (a slow or stuck receiver)


@dataclass(frozen=True, slots=True)
class Request:
    """One request as the receiver got it; header names lowercase."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = owner.record(Request(self.path, headers, body, time.monotonic()))
        pause = answer.delay_seconds + owner.hold_seconds
        if pause:
            time.sleep(pause)
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the recorded requests instead."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections under concurrent senders, and a
    # dropped SYN costs the sender a one-second retransmission.
    request_queue_size = 128

    def __init__(self, owner: WebhookReceiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner


class WebhookReceiver:
    """Records requests; answers each path from its script, then ``200``."""

    def __init__(self, *, hold_seconds: float = 0.0) -> None:
        self.hold_seconds = hold_seconds
        self.requests: list[Request] = []
        self._scripts: dict[str, list[Answer]] = {}
        self._lock = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Listen on a free loopback port."""
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on."""
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to ``path`` with ``answers``, in order; then ``200``."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(answers)

    def record(self, request: Request) -> Answer:
        """Keep one request; the answer it gets."""
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
            script = self._scripts.get(request.path)
            return script.pop(0) if script else Answer()

    def to(self, path: str) -> list[Request]:
        """The requests to ``path`` so far."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(
        self, count: int, timeout_seconds: float = 20.0, path: str | None = None
    ) -> list[Request]:
        """Wait until ``count`` requests (to ``path``, if given) arrived; returns them."""
        deadline = time.monotonic() + timeout_seconds
        with self._lock:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(got)} of {count} webhook requests arrived")
                self._lock.wait(left)
