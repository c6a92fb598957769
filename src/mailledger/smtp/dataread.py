"""DATA read in blocks, with exactly the semantics of aiosmtpd's line-by-line reader.

aiosmtpd 1.4 reads DATA with one ``readuntil(b"\\r\\n")`` per line and a Python loop around it,
about 25 µs per KB. Here the stream is read up to the terminator with
``readuntil(b"\\r\\n.\\r\\n")`` and the lines are checked with ``bytes.split``; what is decided
stays aiosmtpd's, byte for byte:

* only CRLF ends a line, so only CRLF "." CRLF ends the data: a bare LF "." LF (SMTP
  smuggling) is message content, and nothing after the terminator is read;
* a line over the stream limit (more than ``line_limit`` bytes before its CRLF) makes the
  reply "500 Line too long" before its bytes are counted, and so does a complete line over
  ``line_limit`` bytes with its CRLF (aiosmtpd's second check), after they are counted;
* more than ``size_limit`` bytes of dot-stuffed lines make it "552 Too much mail data",
  whichever of the two happens first wins, and either way the rest is read to the terminator
  and dropped;
* a leading dot is removed from every line (RFC 5321 §4.5.2).

Under ``CaptureSMTP`` a message past ``spool.SPOOL_BYTES`` goes to disk as it arrives
(``spool``); if the disk refuses it, the rest is read and dropped and the reply is 451 4.3.0
(452 4.3.1 when the disk is full), as intake would answer.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import re
from collections.abc import Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError

from aiosmtpd.smtp import MISSING, SMTP, syntax

from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.smtp.spool import SPOOL_BYTES, SpooledMessage, start_spool, unstuff
from mailledger.store.blobs import BlobFile

# aiosmtpd's logger, for the one line its DATA logs and ours keeps.
aiosmtpd_log = logging.getLogger("mail.log")
log = get_logger(__name__)

TERMINATOR = b"\r\n.\r\n"
# The everyday MAIL/RCPT argument: <dot-atom@dot-atom domain>, then parameters (RFC 5321 §4.1.2).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ANGLE_ADDR = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"((?: [A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?)*)"
)
CRLF = b"\r\n"

# KMP over TERMINATOR: the longest prefix of it that ends the bytes read so far, after a byte.
_NEXT: dict[tuple[int, int], int] = {}
for _state in range(len(TERMINATOR)):
    for _byte in b"\r\n.":
        _seen = TERMINATOR[:_state] + bytes([_byte])
        _NEXT[(_state, _byte)] = next(
            k for k in range(len(_seen), -1, -1) if TERMINATOR.startswith(_seen[len(_seen) - k :])
        )


class DataState(enum.Enum):
    """aiosmtpd's ``_DataState``: how a DATA ends."""

    NOMINAL = "nominal"
    TOO_LONG = "too long"
    TOO_MUCH = "too much"
    NOT_STORED = "not stored"  # ours: the spool file could not be written


class DataScanner:
    """aiosmtpd's DATA checks over the bytes before the terminator, fed in any pieces."""

    def __init__(
        self,
        size_limit: int | None,
        line_limit: int,
        *,
        spool: Callable[[], BlobFile] | None = None,
        spool_bytes: int = SPOOL_BYTES,
    ) -> None:
        self.size_limit = size_limit or 0  # 0 or None: no limit, as in aiosmtpd
        self.line_limit = line_limit
        self.state = DataState.NOMINAL
        self._new_file = spool  # None: the message stays in memory however large
        self._spool_bytes = spool_bytes
        self._spooled: SpooledMessage | None = None
        self.error: OSError | None = None  # why the spool file could not be written
        # Checked complete lines, as the runs of bytes they arrived in, and the bytes after
        # them. A list, not one growing buffer: growing a 10 MB buffer copies it on the way,
        # and joining once at the end is the only whole copy.
        self._runs: list[bytes] = []
        self._checked = 0  # bytes in _runs
        self._tail = bytearray()  # bytes of a line not yet complete

    def feed(self, piece: bytes) -> None:
        """Take the next bytes of the data; bytes are dropped once the outcome is decided."""
        if self.state is not DataState.NOMINAL:
            return
        self._tail += piece
        end = self._tail.rfind(CRLF)
        if end >= 0:
            self._check_lines(end + 2)
        # An unfinished line longer than the stream limit is an overrun in aiosmtpd: the
        # line is too long before any of it is counted (a final CR may still pair with LF).
        if self.state is DataState.NOMINAL and len(self._tail) - 1 > self.line_limit:
            self._decide(DataState.TOO_LONG)

    def content(self) -> bytes | SpooledMessage | None:
        """The message with dot-stuffing removed, or None when it is refused (see ``state``).

        A spooled message is handed over with its file closed for writing; whoever takes it
        discards it unless intake stored it.
        """
        if self.state is not DataState.NOMINAL:
            return None
        if self._tail:
            raise ValueError("the data must end with CRLF before the terminator")
        if self._spooled is not None:
            spooled, self._spooled = self._spooled, None
            spooled.file.close()
            return spooled
        return self._joined()

    def discard(self) -> None:
        """Drop everything, the spool file too (the DATA was cut off)."""
        self._runs, self._tail = [], bytearray()
        if self._spooled is not None:
            self._spooled.discard()
            self._spooled = None

    def _joined(self) -> bytes:
        data = self._runs[0] if len(self._runs) == 1 else b"".join(self._runs)
        self._runs = []
        return unstuff(data)

    def _check_lines(self, end: int) -> None:
        """Check the complete lines in the first ``end`` bytes of the tail, then the total."""
        run = bytes(self._tail[:end])
        lines = run.split(CRLF)
        lines.pop()  # the run ends with CRLF: the last piece is empty
        if max(map(len, lines)) + 2 > self.line_limit:
            self._first_long_line(self._checked, lines)
            return
        del self._tail[:end]
        self._checked += end
        if self.size_limit and self._checked > self.size_limit:
            self._decide(DataState.TOO_MUCH)
            return
        self._keep(run)

    def _keep(self, run: bytes) -> None:
        """Keep a checked run: in memory, or on disk once the message is large."""
        try:
            if self._spooled is not None:
                self._spooled.add(unstuff(run))
                return
            self._runs.append(run)
            if self._new_file is None or self._checked <= self._spool_bytes:
                return
            try:
                file = self._new_file()
            except OSError:
                self._new_file = None  # cannot spool: keep it in memory; intake will tell
                return
            try:
                self._spooled = start_spool(file, self._joined())
            except OSError:
                file.discard()
                raise
        except OSError as exc:
            self.error = exc
            self._decide(DataState.NOT_STORED)

    def _first_long_line(self, offset: int, lines: list[bytes]) -> None:
        """Which comes first, in aiosmtpd's order: the total over the limit or a long line."""
        limit = self.size_limit
        for line in lines:
            size = len(line) + 2
            if size <= self.line_limit:
                offset += size
                if limit and offset > limit:
                    self._decide(DataState.TOO_MUCH)
                    return
                continue
            overrun = len(line) > self.line_limit  # the stream reader's limit: not counted
            if not overrun and limit and offset + size > limit:
                self._decide(DataState.TOO_MUCH)
            else:
                self._decide(DataState.TOO_LONG)
            return

    def _decide(self, state: DataState) -> None:
        self.state = state
        self.discard()  # dropped at once, as aiosmtpd does


async def read_data(reader: asyncio.StreamReader, scanner: DataScanner) -> None:
    """Read DATA up to and with the terminator, feeding ``scanner`` everything before it.

    The data starts at the beginning of a line, so ".\\r\\n" first, or a terminator whose
    first CRLF was already read, also ends it: bytes are read one at a time while what was
    read could still be the start of a terminator, then in blocks. Once a block read has
    left the data past any partial terminator, none can span two reads: ``readuntil``
    keeps the last ``len(separator) - 1`` bytes it has searched.
    """
    state = 2  # an empty message ends at once: as if a CRLF had just been read
    head = bytearray()
    while 0 < state < len(TERMINATOR):
        byte = await reader.readexactly(1)
        head += byte
        state = _NEXT.get((state, byte[0]), 0)
    if state == len(TERMINATOR):
        scanner.feed(bytes(head[:-3]))
        return
    scanner.feed(bytes(head))
    while True:
        try:
            block = await reader.readuntil(TERMINATOR)
        except asyncio.LimitOverrunError as exc:
            scanner.feed(await reader.readexactly(exc.consumed))
            continue
        scanner.feed(block[:-3])
        return


def _not_stored_reply(error: OSError | None) -> str:
    full = error is not None and error.errno in (errno.ENOSPC, errno.EDQUOT)
    return str(replies.INSUFFICIENT_STORAGE if full else replies.STORAGE_FAILED)


class BlockDataSMTP(SMTP):
    """aiosmtpd's SMTP with DATA read in blocks: same replies, same envelope, same hooks.

    With ``spool`` set (a way to start a blob file), a large message reaches the DATA hook as
    a ``SpooledMessage`` instead of bytes, and its file is removed after the hook unless the
    hook stored it.
    """

    spool: Callable[[], BlobFile] | None = None
    spool_bytes = SPOOL_BYTES

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parse, without the class it defines on every call.

        aiosmtpd 1.4 declares a ``typing.Protocol`` inside ``_getaddr`` for its type hints:
        building that class is most of the 130 µs each MAIL and RCPT spend here.
        """
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDR.fullmatch(arg)
        if plain is not None:
            # <dot-atom@domain> and esmtp-params: what the email parser returns (it takes the
            # space after ">" as folding white space), at a tenth of the cost.
            addr, rest = plain.group(1), plain.group(2)[1:]
        else:
            try:
                parsed = get_angle_addr(arg) if arg.lstrip().startswith("<") else get_addr_spec(arg)
            except (HeaderParseError, IndexError):
                # IndexError: the parser's own fault on "<carol@>"; aiosmtpd lets it escape
                # and the session answers 451, where a bad address is a syntax error.
                return None, None
            address, rest = parsed
            addr = str(address.addr_spec)
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    @syntax("DATA")
    async def smtp_DATA(  # noqa: N802 - aiosmtpd dispatches on this name
        self, arg: str
    ) -> None:
        """aiosmtpd's ``smtp_DATA`` step for step, with ``read_data`` in place of its loop."""
        if self._decode_data or "DATA" not in self._handle_hooks:
            # Modes the capture listener does not use: aiosmtpd's own reader.
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        scanner = DataScanner(
            self.data_size_limit,
            self.line_length_limit,
            spool=self.spool,
            spool_bytes=self.spool_bytes,
        )
        try:
            await read_data(self._reader, scanner)
        except BaseException as exc:
            scanner.discard()
            if isinstance(exc, asyncio.CancelledError):
                aiosmtpd_log.info("Connection lost during DATA")
                self._writer.close()
            raise
        content = scanner.content()
        if content is None:
            if scanner.state is DataState.NOT_STORED:
                log.warning("message not stored: the spool file failed", error=str(scanner.error))
                reply = _not_stored_reply(scanner.error)
            elif scanner.state is DataState.TOO_LONG:
                reply = "500 Line too long (see RFC5321 4.5.3.1.6)"
            else:
                reply = "552 Error: Too much mail data"
            await self.push(reply)
            self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd untyped
            return
        # A SpooledMessage where aiosmtpd types bytes: only a hook that spools reads it.
        self.envelope.content = content  # type: ignore[assignment]
        self.envelope.original_content = content  # type: ignore[assignment]
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if isinstance(content, SpooledMessage):
                content.discard()  # stored: renamed away already, and this does nothing
        self._set_post_data_state()  # type: ignore[no-untyped-call]  # aiosmtpd untyped
        await self.push("250 OK" if status is MISSING else status)
