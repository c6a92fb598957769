"""aiosmtpd's command loop, with CRLF-only command lines and a bounded session life.

aiosmtpd 1.4 reads each command up to LF and strips any CR and LF from its end, so
``EHLO x\\nMAIL FROM:<…>\\r\\n`` runs as two commands, where a server that frames lines by
CRLF, as RFC 5321 §2.3.8 says, sees one. The loop here is aiosmtpd's ``_handle_client`` step
for step (same replies, same limits, same hooks) with four changes:

* a command line holding a bare CR or LF is refused with 500 5.5.2 and does not run
  (``framing.CommandFraming``; Postfix's ``smtpd_forbid_bare_newline``); the session goes on;
* commands that make no progress are counted, and past ``max_junk_commands`` since the last
  accepted message the session is closed (Postfix's ``smtpd_junk_command_limit``);
* a session is closed once it has lasted ``max_session_seconds``, whatever it is doing, even
  inside a DATA that dribbles in a byte at a time; a message being stored is answered first;
* the idle timeout is one timer per session that, when it fires, checks how long the session
  has really been idle and waits out the rest: aiosmtpd cancels and schedules a timer on
  every command, four a message, each left in the loop's heap until its time comes.

A session closed by a cap, or by the idle timeout, is told 421 4.4.2 first (RFC 5321 §3.8).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, TLSSetupException

from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.replies import Reply
from mailledger.smtp.dataread import BlockDataSMTP, aiosmtpd_log
from mailledger.smtp.framing import CommandFraming, is_junk

log = get_logger(__name__)

TOO_MANY_UNKNOWN_COMMANDS = replies.TOO_MANY_JUNK_COMMANDS.with_text(
    "Too many unrecognized commands, closing connection"
)


class CommandLoopSMTP(BlockDataSMTP):
    """aiosmtpd's SMTP with the command loop above; ``None`` for a cap means no cap."""

    max_session_seconds: float | None = None
    max_junk_commands: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.junk_commands = 0  # since the session began or its last accepted message
        self._storing = False  # the DATA hook runs: the message is being stored
        self._pending_close: Reply | None = None  # a cap hit while storing, said after it
        self._session_clock: asyncio.TimerHandle | None = None
        self._last_command = 0.0  # loop time of the last valid command (the idle timeout)
        self._idle_timer = False  # the timer running is ``_idle_check``

    # --- closing with a reason ------------------------------------------------------------

    def close_with(self, reply: Reply) -> None:
        """Say ``reply`` (a 421) and close; a message being stored is answered first."""
        if self._storing:
            self._pending_close = self._pending_close or reply
            return
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        transport.write(str(reply).encode("ascii") + b"\r\n")
        transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The idle timer starts again: noted now, checked when the timer fires."""
        if duration is not None:  # aiosmtpd's PROXY timeout: its own timer, as aiosmtpd does
            super()._reset_timeout(duration)
            self._idle_timer = False
            return
        self._last_command = self.loop.time()
        if self._timeout_handle is None or not self._idle_timer:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._idle_timer = True
            self._timeout_handle = self.loop.call_at(
                self._last_command + self._timeout_duration, self._idle_check
            )

    def _idle_check(self) -> None:
        """The idle timer fired: time out, or wait until the timeout counted from the last
        command."""
        due = self._last_command + self._timeout_duration
        if self.loop.time() < due:
            self._timeout_handle = self.loop.call_at(due, self._idle_check)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        """aiosmtpd's timeout (``timeout_seconds`` from the last command), saying why."""
        log.info("session timed out", seconds=self._timeout_duration)
        self.close_with(replies.TIMED_OUT)

    def _session_expired(self) -> None:
        log.info("session time limit reached", seconds=self.max_session_seconds)
        self.close_with(replies.SESSION_TOO_LONG)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """The handler's hook; DATA's is marked as storing, and a 2xx resets the junk count."""
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self._storing = True
        try:
            status = await super()._call_handler_hook(command, *args)
        finally:
            self._storing = False
        if status is MISSING or str(status).startswith("2"):
            self.junk_commands = 0
        return status

    # --- the loop -------------------------------------------------------------------------

    async def _handle_client(self) -> None:
        if self._proxy_timeout is not None or self._enforce_call_limit:
            # Modes neither listener uses: aiosmtpd's own loop.
            await super()._handle_client()
            return
        if self.max_session_seconds:
            self._session_clock = self.loop.call_later(
                self.max_session_seconds, self._session_expired
            )
        try:
            await self.push(f"220 {self.hostname} {self.__ident__}")
            await self._serve_commands()
        finally:
            if self._session_clock is not None:
                self._session_clock.cancel()

    async def _serve_commands(self) -> None:
        """aiosmtpd's loop (see the module docstring for what differs)."""
        assert self.session is not None
        framing = CommandFraming()
        bogus_budget = BOGUS_LIMIT
        while self.transport is not None:
            try:
                parsed = await self._next_command(framing)
                if parsed is None:
                    continue  # answered already
                command, arg = parsed
                method = self._smtp_methods.get(command)
                if is_junk(command, known=method is not None):
                    self.junk_commands += 1
                    if self.max_junk_commands and self.junk_commands > self.max_junk_commands:
                        log.warning("too many commands without progress", command=command)
                        self.close_with(replies.TOO_MANY_JUNK_COMMANDS)
                        return
                if method is None:
                    aiosmtpd_log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        log.warning("too many unrecognized commands")
                        self.close_with(TOO_MANY_UNKNOWN_COMMANDS)
                        return
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                # A valid command: the idle timer starts again.
                self._reset_timeout()
                await method(arg)
                if self._pending_close is not None:
                    # A cap was hit while the message was stored; it is answered now.
                    self.close_with(self._pending_close)
                    return
            except (asyncio.CancelledError, ConnectionResetError):
                # The connection closed (or a cap closed it) while a command ran.
                aiosmtpd_log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:  # noqa: BLE001 - aiosmtpd's: every fault gets a reply
                await self._answer_fault(error)

    async def _next_command(self, framing: CommandFraming) -> tuple[str, str | None] | None:
        """The next command and its argument, or None once a refusal has been answered."""
        assert self.session is not None
        try:
            line: bytes = await self._reader.readuntil()
        except asyncio.LimitOverrunError as error:
            # Line too long: read to its end before answering, as aiosmtpd does.
            skipped = await self._reader.read(error.consumed)
            while True:
                try:
                    # With the byte before it: the CR of a CRLF may end the skipped part.
                    tail = skipped[-1:] + await self._reader.readuntil()
                    break
                except asyncio.LimitOverrunError as more:
                    skipped = await self._reader.read(more.consumed)
            framing.overrun(tail)
            await self.push("500 Command line too long")
            return None
        if framing.refuses(line):
            log.info("command refused: bare CR or LF")
            await self.push(str(replies.BARE_NEWLINE_IN_COMMAND))
            return None
        line = line[:-2]  # the CRLF; no other CR or LF is left in the line
        command_bytes, _, arg_bytes = line.partition(b" ")
        if not line or not command_bytes.isascii():
            await self.push("500 Error: bad syntax")
            return None
        command = command_bytes.upper().decode("ascii")
        arg: str | None = None
        if arg_bytes:
            arg_bytes = arg_bytes.strip()
            if self.enable_SMTPUTF8:
                # aiosmtpd's choice: bytes that are not UTF-8 survive as surrogates.
                arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
            elif arg_bytes.isascii():
                arg = arg_bytes.decode("ascii")
            else:
                await self.push("500 Error: strict ASCII mode")
                return None
        max_size = (
            self.command_size_limits[command]
            if self.session.extended_smtp
            else self.command_size_limit
        )
        if len(line) > max_size:
            await self.push("500 Command line too long")
            return None
        if not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 Command refused due to lack of security")
            return None
        starttls_first = self.require_starttls and not self._tls_protocol
        if starttls_first and command not in ALLOWED_BEFORE_STARTTLS:
            # RFC 3207 §4
            await self.push("530 Must issue a STARTTLS command first")
            return None
        return command, arg

    async def _answer_fault(self, error: Exception) -> None:
        """aiosmtpd's answer to a fault in a command: the handler's reply, then go on."""
        status: str | None = None
        try:
            status = await self.handle_exception(error)
        except Exception as inner_error:  # noqa: BLE001 - as aiosmtpd: still answer
            peer = self.session.peer if self.session is not None else None
            aiosmtpd_log.exception("%r Exception in handle_exception()", peer)
            status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
        finally:
            if isinstance(error, TLSSetupException):
                assert self.transport is not None
                self.transport.close()
                self.connection_lost(error)
            else:
                await self.push(status or "500 Error: Cannot describe error")
