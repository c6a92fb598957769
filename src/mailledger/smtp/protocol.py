"""The capture listener's SMTP protocol: aiosmtpd's, with a trace id and complete replies.

Each connection gets a short random trace id, shown in the 220 banner and bound into every log
line of the session, so an operator can find a sender's complaint in the logs (Postal's
``server.rb``). It lives on the protocol instance: aiosmtpd rebuilds ``Session`` after
STARTTLS. aiosmtpd's own replies without an RFC 3463 enhanced status code are rewritten here,
so every refusal a sender sees carries one (RFC 2034).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import SMTP, Envelope, syntax

from mailledger.config import Settings, TLSSettings
from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.smtp.commandloop import CommandLoopSMTP
from mailledger.smtp.dataread import aiosmtpd_log
from mailledger.smtp.session import CaptureEnvelope, format_peer
from mailledger.smtp.smtputf8 import path_refusal
from mailledger.store.blobs import BlobFile

log = get_logger(__name__)

TRACE_ID_BYTES = 6  # 12 hex characters: short enough to read out on the phone

TOO_MANY_SESSIONS = replies.SHUTTING_DOWN.with_text("Too many connections, try again later")

# aiosmtpd's fixed replies that lack an enhanced status code, and what we answer instead.
_EXACT: dict[str, Reply] = {
    "552 Error: Too much mail data": replies.MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": replies.MESSAGE_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": replies.LINE_TOO_LONG,
    "500 Command line too long": Reply(500, "5.5.2", "Command line too long"),
    "500 Error: bad syntax": Reply(500, "5.5.2", "Syntax error"),
    "500 Error: strict ASCII mode": Reply(500, "5.6.7", "Non-ASCII data not accepted"),
    "503 Error: need MAIL command": Reply(503, "5.5.1", "Need MAIL command first"),
    "503 Error: need RCPT command": Reply(503, "5.5.1", "Need RCPT command first"),
    "503 Error: nested MAIL command": Reply(503, "5.5.1", "Nested MAIL command"),
    "503 Error: send HELO first": Reply(503, "5.5.1", "Send HELO first"),
    "503 Error: send EHLO first": Reply(503, "5.5.1", "Send EHLO first"),
    "503 Already authenticated": Reply(503, "5.5.1", "Already authenticated"),
    "454 TLS not available": Reply(454, "4.7.0", "TLS not available"),
    "554 Command refused due to lack of security": Reply(554, "5.7.0", "TLS handshake failed"),
    "530 Must issue a STARTTLS command first": Reply(530, "5.7.0", "Issue STARTTLS first"),
    "502 EXPN not implemented": Reply(502, "5.5.1", "EXPN not implemented"),
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": Reply(
        501, "5.5.4", "BODY can only be 7BIT or 8BITMIME"
    ),
    "501 Error: SMTPUTF8 takes no arguments": Reply(501, "5.5.4", "SMTPUTF8 takes no arguments"),
    "555 MAIL FROM parameters not recognized or not implemented": Reply(
        555, "5.5.4", "MAIL FROM parameters not recognized or not implemented"
    ),
    "555 RCPT TO parameters not recognized or not implemented": Reply(
        555, "5.5.4", "RCPT TO parameters not recognized or not implemented"
    ),
    "221 Bye": Reply(221, "2.0.0", "Bye"),
    "250 OK": replies.OK,
}
# aiosmtpd says "553 5.1.3 malformed address" for MAIL as well as RCPT; 5.1.7 is the sender's.
_MALFORMED = "553 5.1.3 Error: malformed address"
# For any other bare refusal: the enhanced code that fits its basic code (RFC 3463 §3).
_DEFAULT_STATUS = {
    421: "4.3.2",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    550: "5.0.0",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_BARE = re.compile(r"^([45]\d\d) (?!\d\.\d{1,3}\.\d{1,3}(?: |$))(.*)$", re.DOTALL)


def rewrite_reply(line: str, *, in_mail: bool = False) -> str:
    """The reply to send for one of aiosmtpd's: with an enhanced status code, always."""
    exact = _EXACT.get(line)
    if exact is not None:
        return str(exact)
    if line == _MALFORMED:
        return str(replies.BAD_SENDER_SYNTAX if in_mail else replies.BAD_RECIPIENT_SYNTAX)
    if line.startswith("500 Error: command ") and line.endswith(" not recognized"):
        return str(Reply(500, "5.5.1", "Command not recognized"))
    match = _BARE.match(line)
    if match is None:
        return line
    code = int(match.group(1))
    status = _DEFAULT_STATUS.get(code, f"{code // 100}.0.0")
    return f"{code} {status} {match.group(2)}"


def new_trace_id() -> str:
    """A short random id naming one SMTP connection in replies and logs."""
    return secrets.token_hex(TRACE_ID_BYTES)


def build_tls_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """The server context for STARTTLS, or None when no certificate is configured."""
    if not tls.cert_file or not tls.key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class SessionGate:
    """Admits sessions up to a limit, and none once the listener is stopping."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.stopping = False
        self.sessions: set[CaptureSMTP] = set()
        # Set whenever a session ends or finishes a DATA, for a stopping listener to wait on.
        self.changed = asyncio.Event()

    def admit(self, session: CaptureSMTP) -> Reply | None:
        """The refusal for a new session, or None after counting it in."""
        if self.stopping:
            return replies.SHUTTING_DOWN
        if len(self.sessions) >= self.max_sessions:
            return TOO_MANY_SESSIONS
        self.sessions.add(session)
        return None

    def release(self, session: CaptureSMTP) -> None:
        """Count a session out when it ends, however it ends."""
        self.sessions.discard(session)
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits for sessions to end or to leave DATA."""
        self.changed.set()

    async def wait_changed(self, timeout_seconds: float) -> None:
        """Wait until a session ends or leaves DATA, or the time is up."""
        self.changed.clear()
        if timeout_seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_seconds)

    @property
    def in_data(self) -> int:
        """How many sessions are receiving or storing a message right now."""
        return sum(1 for session in self.sessions if session.in_data)


class CaptureSMTP(CommandLoopSMTP):
    """aiosmtpd's SMTP with our trace id, replies, limits and graceful shutdown.

    DATA is read in blocks (``dataread``), with aiosmtpd's semantics kept exactly; command
    lines end with CRLF only, and a session's time and idle commands are capped
    (``commandloop``); a non-ASCII path needs SMTPUTF8 (``smtputf8``).
    """

    def __init__(
        self,
        handler: Any,
        *,
        settings: Settings,
        gate: SessionGate,
        tls_context: ssl.SSLContext | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        spool: Callable[[], BlobFile] | None = None,
    ) -> None:
        self.trace_id = new_trace_id()
        self.spool = spool
        self.in_data = False
        self._gate = gate
        self._in_mail = False
        super().__init__(
            handler,
            # Advertised as SIZE (RFC 1870) and enforced on MAIL and while reading DATA.
            data_size_limit=settings.capture.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.service.hostname,
            ident=f"ESMTP mailledger {self.trace_id}",
            tls_context=tls_context,
            timeout=settings.capture.timeout_seconds,
            # The capture listener takes no logins: submission is another listener.
            auth_require_tls=True,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            loop=loop or asyncio.get_running_loop(),
        )
        # aiosmtpd keeps these limits in a class-level dict that every EHLO grows; one per
        # connection keeps one session's EHLOs from loosening another's limits.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.max_session_seconds = settings.capture.max_session_seconds
        self.max_junk_commands = settings.capture.max_junk_commands

    def _create_envelope(self) -> Envelope:
        return CaptureEnvelope()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """The handler's hook, after aiosmtpd's checks; a path that needs SMTPUTF8 without
        it never reaches the handler (RFC 6531 §3.4)."""
        if command in ("MAIL", "RCPT") and self.envelope is not None:
            refusal = path_refusal(
                str(args[0]), smtputf8=bool(self.envelope.smtp_utf8), sender=command == "MAIL"
            )
            if refusal is not None:
                log.info("path refused", command=command, reply=str(refusal))
                return str(refusal)
        return await super()._call_handler_hook(command, *args)

    async def push(self, status: AnyStr) -> None:
        """Send a reply, completing aiosmtpd's bare ones with an enhanced status code.

        aiosmtpd's ``push``, with its wait for the write buffer to drain only when there is
        something to wait for: a reply the socket took whole leaves nothing buffered (four
        replies a message, each a coroutine round that never waited).
        """
        if isinstance(status, str):
            reply = rewrite_reply(status, in_mail=self._in_mail)
            response = reply.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        writer = self._writer
        writer.write(response + b"\r\n")
        if aiosmtpd_log.isEnabledFor(logging.DEBUG):
            assert self.session is not None
            aiosmtpd_log.debug("%r << %r", self.session.peer, response)
        transport = writer.transport
        if transport.is_closing() or transport.get_write_buffer_size():
            # Closing: drain raises the lost connection; buffered: wait under flow control.
            await writer.drain()

    async def _handle_client(self) -> None:
        # Runs as this connection's own task: what is bound here is in its log lines only.
        assert self.session is not None
        structlog.contextvars.bind_contextvars(
            trace_id=self.trace_id, peer=format_peer(self.session.peer)
        )
        refusal = self._gate.admit(self)
        if refusal is not None:
            log.info("session refused", reply=str(refusal))
            await self.push(str(refusal))
            if self.transport is not None:
                self.transport.close()
            return
        log.info("session opened")
        try:
            await super()._handle_client()
        except ConnectionResetError:
            log.info("connection reset by peer")
        finally:
            self._gate.release(self)
            log.info("session closed")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(  # noqa: N802 - aiosmtpd dispatches on this name
        self, arg: str | None
    ) -> None:
        """aiosmtpd's MAIL, remembering that a malformed address now is the sender's."""
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    @syntax("DATA")
    async def smtp_DATA(  # noqa: N802 - aiosmtpd dispatches on this name
        self, arg: str
    ) -> None:
        """DATA (read in blocks), marked as in progress so a shutdown lets it finish."""
        self.in_data = True
        try:
            await super().smtp_DATA(arg)
        finally:
            self.in_data = False
            self._gate.notify()
        if self._gate.stopping:
            # The message is answered; now tell the client we are going (RFC 5321 §3.8).
            self.shut_down()

    def shut_down(self) -> None:
        """Say 421 and close; used for idle sessions when the listener stops."""
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        transport.write(str(replies.SHUTTING_DOWN).encode("ascii") + b"\r\n")
        transport.close()
