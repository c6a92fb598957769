"""Recording SMTP servers that stand in for remote MX hosts (and a smarthost) in tests.

Each :class:`Recorder` is an aiosmtpd server on one loopback address (``127.0.0.51``…) that
keeps every transaction it sees: peer, HELO name, envelope, the exact bytes
(``envelope.original_content``, dot-unstuffed, nothing else changed), whether TLS was on and
what it answered. Replies can be scripted per stage (first DATA ``451``, then ``250``; ``550``
for one recipient), the DATA reply can be held back (to kill a sender mid-delivery), and the
server can be stopped and started again on the same address and port (a host that is down).

**Threading.** Every recorder runs its own event loop in a daemon thread, so it serves a
pytest-asyncio test's loop, synchronous tests and subprocesses alike, and a test can block
(``wait_for``) without stalling it. All its public methods are called from the test's thread.

**Ports.** ``[relay] smtp_port`` is one number for every remote host, so the recorders of one
test share a port on different addresses: :func:`start_recorders` binds ``127.0.0.1:0`` for a
free number, then binds it on each address, and starts over with a new number on a collision.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from mailledger.testing.ports import free_port

DEFAULT_REPLY: Final = {"MAIL": "250 2.1.0 OK", "RCPT": "250 2.1.5 OK", "DATA": "250 2.0.0 OK"}
PORT_ATTEMPTS: Final = 20


@dataclass
class Transaction:
    """One SMTP transaction that reached DATA."""

    peer: str
    helo: str
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    authenticated: str = ""
    reply: str = ""  # the reply to the data, decided (and a 250 committed) before it is sent
    at: float = field(default_factory=time.monotonic)

    @property
    def accepted(self) -> bool:
        """Whether the recorder answered 250 to this message."""
        return self.reply.startswith("250")


class _Handler:
    """The aiosmtpd handler: scripted replies, and a record of each transaction."""

    def __init__(self, owner: Recorder) -> None:
        self.owner = owner

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.owner.next_reply("MAIL")
        if reply.startswith("250"):
            envelope.mail_from = address
            envelope.mail_options.extend(options)
        return reply

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.owner.rcpt_replies.get(address.lower()) or self.owner.next_reply("RCPT")
        if reply.startswith("250"):
            # aiosmtpd's contract: a handler that answers RCPT records the recipient itself.
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return reply

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Any, envelope: Any
    ) -> str:
        login = session.auth_data if session.authenticated else None
        record = Transaction(
            peer=f"{session.peer[0]}:{session.peer[1]}" if session.peer else "",
            helo=session.host_name or "",
            # aiosmtpd keeps the null reverse path as "<>" (it needs a true value); we record "".
            mail_from="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            mail_options=list(envelope.mail_options),
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            tls=session.ssl is not None,
            authenticated=str(login or ""),
        )
        # The reply is decided, and a 250 committed, before it is sent: ``data_delay`` holds
        # back only the sending, so a client that dies meanwhile leaves a message the remote
        # host has and the client never heard about (the duplicate window of RFC 5321 §6.1).
        record.reply = self.owner.next_reply("DATA")
        self.owner.add(record)
        delay = self.owner.data_delay
        if delay:
            await asyncio.sleep(delay)
        return record.reply


class _Protocol(SMTP):
    """aiosmtpd's SMTP that tells its recorder when it connects and goes away."""

    def __init__(self, owner: Recorder, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner.live.add(self)
        self._owner.connections += 1
        self._owner.max_live = max(self._owner.max_live, len(self._owner.live))
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.live.discard(self)
        super().connection_lost(exc)

    def abort(self) -> None:
        if isinstance(self.transport, asyncio.Transport):
            self.transport.abort()


class Recorder:
    """One recording SMTP server on ``host:port`` (port 0: any free port)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "",
        tls_context: ssl.SSLContext | None = None,
        auth: dict[str, str] | None = None,
        size_limit: int = 33554432,
        smtputf8: bool = False,
    ) -> None:
        """``tls_context`` offers STARTTLS with it; ``auth`` offers AUTH PLAIN/LOGIN for these
        users (after STARTTLS only, as aiosmtpd requires by default)."""
        self.host = host
        self.port = port
        self.name = name or host
        self.tls_context = tls_context
        self.auth = dict(auth or {})
        self.size_limit = size_limit
        self.smtputf8 = smtputf8
        self.transactions: list[Transaction] = []
        self.connections = 0
        self.max_live = 0  # the most connections it had open at once
        self.live: set[_Protocol] = set()
        self.rcpt_replies: dict[str, str] = {}  # lowercase address → reply, every time
        self.data_delay = 0.0  # seconds between committing a message and sending the reply
        self._script: dict[str, deque[str]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"recorder-{host}", daemon=True
        )
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None

    # --- scripting --------------------------------------------------------------------------

    def script(self, stage: str, *replies: str) -> None:
        """Answer the next transactions' ``stage`` (MAIL, RCPT, DATA) with these, in order."""
        with self._lock:
            self._script.setdefault(stage.upper(), deque()).extend(replies)

    def next_reply(self, stage: str) -> str:
        with self._lock:
            queue = self._script.get(stage)
            if queue:
                return queue.popleft()
        return DEFAULT_REPLY[stage]

    def add(self, record: Transaction) -> None:
        with self._changed:
            self.transactions.append(record)
            self._changed.notify_all()

    # --- waiting ----------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[list[Transaction]], bool], timeout: float = 10.0
    ) -> list[Transaction]:
        """Block until ``predicate(transactions)`` holds; raises ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.transactions):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"recorder {self.name}: condition not met in {timeout}s")
                self._changed.wait(left)
            return list(self.transactions)

    async def wait_for_async(
        self, predicate: Callable[[list[Transaction]], bool], seconds: float = 10.0
    ) -> list[Transaction]:
        """:meth:`wait_for` for async tests, without blocking their event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, seconds)

    @property
    def accepted(self) -> list[Transaction]:
        """Transactions answered 250."""
        with self._lock:
            return [t for t in self.transactions if t.accepted]

    # --- running ----------------------------------------------------------------------------

    def _factory(self) -> _Protocol:
        kwargs: dict[str, Any] = {
            "hostname": self.name,
            "data_size_limit": self.size_limit,
            "enable_SMTPUTF8": self.smtputf8,
            "loop": self._loop,
        }
        if self.tls_context is not None:
            kwargs["tls_context"] = self.tls_context
        if self.auth:
            kwargs["authenticator"] = self._authenticate
        return _Protocol(self, _Handler(self), **kwargs)

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if self.auth.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    async def _start(self) -> None:
        self._server = await self._loop.create_server(
            self._factory, host=self.host, port=self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for protocol in list(self.live):
                protocol.abort()
            await self._server.wait_closed()
            self._server = None

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> Self:
        """Listen (again); a stopped recorder comes back on the same address and port."""
        if self._server is None:
            self._call(self._start())
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the host is down."""
        self._call(self._stop())

    @property
    def running(self) -> bool:
        """Whether it is listening."""
        return self._server is not None

    def close(self) -> None:
        """Stop for good and end the thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError, TimeoutError):
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_recorders(
    hosts: Sequence[str] | Iterable[str], **options: Any
) -> tuple[int, list[Recorder]]:
    """Start one recorder per address, all on one shared free port; returns (port, recorders).

    ``options`` go to every :class:`Recorder` (TLS, AUTH…); change one afterwards for a
    per-host difference, or stop and restart it with its attributes changed.
    """
    addresses = list(hosts)
    last_error: OSError | None = None
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        recorders: list[Recorder] = []
        try:
            for address in addresses:
                recorder = Recorder(address, port, **options)
                recorders.append(recorder)
                recorder.start()
        except OSError as exc:
            for recorder in recorders:
                recorder.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last_error = exc
            continue
        return port, recorders
    raise OSError(errno.EADDRINUSE, f"no port free on all of {addresses}: {last_error}")
