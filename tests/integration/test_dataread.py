"""DATA read in blocks answers exactly as aiosmtpd's line reader, across any TCP chunking.

Both protocols get the same bytes, cut into the same pieces, through a transport in memory,
so each piece is one ``data_received``: what each replied and what each handed to the
handler must be identical.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from mailledger.smtp.commandloop import CommandLoopSMTP
from mailledger.smtp.dataread import BlockDataSMTP, DataScanner, DataState
from mailledger.smtp.spool import SpooledMessage
from mailledger.store.blobs import BlobFile, BlobStore

HEAD = b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@capture.test>\r\nDATA\r\n"
TAIL = b"NOOP\r\nMAIL FROM:<c@client.test>\r\nQUIT\r\n"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 2525) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[Any, Any]] = []

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        content = envelope.original_content
        if isinstance(content, SpooledMessage):
            # What the spool wrote, and what it counted on the way, are the message's.
            data = content.file.path.read_bytes()
            assert len(content) == len(data)
            assert data.startswith(content.head) and len(content.head) > 0
            assert (content.crlf, content.lf, content.cr, content.nul) == (
                data.count(b"\r\n"),
                data.count(b"\n"),
                data.count(b"\r"),
                b"\0" in data,
            )
            self.got.append((data, data))
            return "250 stored"
        self.got.append((envelope.content, envelope.original_content))
        return "250 stored"


class _SpoolingSMTP(BlockDataSMTP):
    """Spools from the first few bytes on, into a blob store in a temporary directory."""

    spool_bytes = 7
    store: BlobStore


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def _converse(
    cls: type[SMTP], pieces: list[bytes], size_limit: int | None
) -> tuple[bytes, list[tuple[Any, Any]]]:
    handler = _Recorder()
    protocol = cls(handler, data_size_limit=size_limit, hostname="mx.test", ident="test")
    transport = _Transport()
    protocol.connection_made(transport)
    await _settle()
    for piece in pieces:
        protocol.data_received(piece)
        await _settle()
    if not transport.closed:
        protocol.connection_lost(None)
    await _settle()
    return bytes(transport.out), handler.got


def _nothing_in(directory: str) -> bool:
    return not any(Path(directory).iterdir())


async def _same(stream: bytes, cuts: list[int], size_limit: int | None) -> bytes:
    """Feed the protocols; assert they agree; return what they answered.

    The spooling one too: whatever went to disk is gone again after DATA, since the
    recorder stores nothing.
    """
    whole = HEAD + stream + TAIL
    edges = [0, *sorted(c % (len(whole) + 1) for c in cuts), len(whole)]
    pieces = [whole[a:b] for a, b in itertools.pairwise(edges) if b > a]
    expected = await _converse(SMTP, pieces, size_limit)
    got = await _converse(BlockDataSMTP, pieces, size_limit)
    assert got == expected, (stream[:200], cuts, size_limit)
    with tempfile.TemporaryDirectory() as spool_dir:
        _SpoolingSMTP.spool = BlobStore(spool_dir).new_file
        spooled = await _converse(_SpoolingSMTP, pieces, size_limit)
        assert spooled == expected, (stream[:200], cuts, size_limit)
        assert _nothing_in(spool_dir)
    return expected[0]


CASES = {
    "empty": b".\r\n",
    "plain": b"Subject: x\r\n\r\nhello\r\n.\r\n",
    "blank-line-first": b"\r\n\r\nbody\r\n.\r\n",
    "dot-stuffed": b".leading\r\n..two\r\n...\r\nend\r\n..\r\n.\r\n",
    "bare-lf-dot-is-content": b"a\n.\nb\r\n.\n\r\nc\r\n.\r\n",
    "bare-cr-dot-is-content": b"a\r.\rb\r\n\r.\r\n.\r\n",
    "lf-dot-crlf-is-content": b"a\n.\r\nb\r\n.\r\n",
    "crlf-dot-lf-is-content": b"a\r\n.\nb\r\n.\r\n",
    "line-1000": b"x" * 998 + b"\r\n" + b"y" * 999 + b"\r\n.\r\n",
    "line-1001": b"x" * 1000 + b"\r\n.\r\n",
    "line-1002": b"x" * 1001 + b"\r\n.\r\n",
    "line-1003": b"x" * 1002 + b"\r\n.\r\n",
    "line-huge": b"a\r\n" + b"x" * 5000 + b"\r\nmore\r\n.\r\n",
    "line-huge-with-cr": b"x" * 1001 + b"\r" + b"y" * 3000 + b"\r\n.\r\n",
    "dot-after-long-line": b"x" * 3000 + b"\r\n.\r\nNOOP\r\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("size_limit", [None, 0, 30, 1003, 1005, 100000])
async def test_known_cases_agree_at_every_single_cut(name: str, size_limit: int | None) -> None:
    """Each case, cut once at every position of the DATA (and in one piece), agrees."""
    stream = CASES[name]
    await _same(stream, [], size_limit)
    step = 1 if len(stream) < 80 else 97
    for cut in range(len(HEAD), len(HEAD) + len(stream) + 1, step):
        await _same(stream, [cut], size_limit)


async def test_smuggled_terminator_is_content_and_pipelined_commands_survive() -> None:
    """LF.LF and CR.CR do not end DATA; the commands after the real end are answered."""
    stream = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n.\r\n"
    out = await _same(stream, [], None)
    assert out.count(b"250 stored") == 1
    assert b"250 OK" in out.split(b"250 stored", 1)[1]  # the NOOP after it
    _, got = await _converse(BlockDataSMTP, [HEAD + stream + TAIL], None)
    assert got == [(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n",) * 2]


# Command lines that take each of aiosmtpd's early refusals, all ended with CRLF.
COMMANDS = (
    b"\r\n"  # empty: bad syntax
    b" NOOP\r\n"  # empty command word: not recognized
    b"N\xc3\x96OP\r\n"  # not ASCII: bad syntax
    b"NOOP \xc3\xa9\r\n"  # non-ASCII argument without SMTPUTF8: strict ASCII mode
    b"HELP\r\nHELP MAIL\r\nHELP FROB\r\nVRFY <a@client.test>\r\nVRFY\r\nEXPN list\r\n"
    b"MAIL FROM:<" + b"a" * 600 + b"@client.test>\r\n"  # over the command size limit
    b"NOOP " + b"x" * 3000 + b"\r\n"  # over the stream limit: read to its end first
    b"FROB\r\nRSET\r\nRSET x\r\nHELO\r\nNOOP\r\n"
)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_command_loop_answers_as_aiosmtpd_on_crlf_lines(name: str) -> None:
    """With only CRLF line ends, our command loop answers exactly as aiosmtpd's, in one piece
    or cut at every few bytes."""
    whole = HEAD + CASES[name] + COMMANDS + TAIL
    for step in (len(whole), 13):
        pieces = [whole[i : i + step] for i in range(0, len(whole), step)]
        expected = await _converse(SMTP, pieces, 1005)
        got = await _converse(CommandLoopSMTP, pieces, 1005)
        assert got == expected, (name, step)


def _random_stream(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(0, 12)):
        kind = rng.random()
        if kind < 0.45:
            parts.append(bytes(rng.choice(b"ab.\r\n") for _ in range(rng.randrange(0, 12))))
        elif kind < 0.7:
            parts.append(rng.choice([b"\r\n", b".", b"\r\n.", b"\n.\n", b"\r.\r", b"..\r\n"]))
        else:
            parts.append(b"z" * rng.choice([990, 998, 999, 1000, 1001, 1002, 1500, 2100]))
    return b"".join(parts) + rng.choice([b"\r\n.\r\n", b".\r\n", b"\r\n\r\n.\r\n"])


async def test_random_streams_and_chunkings_agree() -> None:
    """Streams built from the awkward bytes, cut at random places, agree every time."""
    rng = random.Random(5321)
    for _ in range(400):
        stream = _random_stream(rng)
        whole = len(HEAD) + len(stream) + len(TAIL)
        cuts = [rng.randrange(whole + 1) for _ in range(rng.randrange(0, 6))]
        limit = rng.choice([None, 0, 5, 40, 1000, 1003, 2500, 10**6])
        await _same(stream, cuts, limit)


def test_scanner_drops_the_bytes_once_the_size_is_exceeded() -> None:
    """Past the limit nothing more is kept, however much follows (memory, not just reply)."""
    scanner = DataScanner(100, 1001)
    for _ in range(1000):
        scanner.feed(b"y" * 70 + b"\r\n")
    assert scanner.state is DataState.TOO_MUCH
    assert scanner.content() is None
    assert scanner._runs == [] and len(scanner._tail) == 0


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "<carol@client.example>",
        "<carol@client.example> SIZE=10240 BODY=8BITMIME",
        "carol@client.example SIZE=1",
        "<>",
        "< carol@client.example >",
        '<"odd local"@client.example>',
        "<@relay.example:carol@client.example>",
        "<carol@[192.0.2.1]>",
        "<foo>",
        "<a b@client.example>",
        "<carol@@client.example>",
        "<jörg@bücher.example>",
        "<carol@client.example",
        "garbage",
        "<" + "x" * 70 + "@client.example>",
    ],
)
@pytest.mark.parametrize("local_part_limit", [0, 64])
async def test_address_parse_is_aiosmtpds(arg: str, local_part_limit: int) -> None:
    """MAIL/RCPT addresses parse exactly as aiosmtpd's own ``_getaddr`` does."""
    ours, theirs = BlockDataSMTP(_Recorder()), SMTP(_Recorder())
    ours.local_part_limit = theirs.local_part_limit = local_part_limit
    assert ours._getaddr(arg) == theirs._getaddr(arg)


async def test_address_parse_is_aiosmtpds_on_random_arguments() -> None:
    """The fast path for plain <local@domain> agrees with aiosmtpd on whatever it takes."""
    rng = random.Random(7)
    locals_ = ["carol", "c.arol", "c..arol", ".carol", "carol.", "c+tag", "o'neil", "a_b-c", "x=y",
               '"q"', "c!#$%&*/=?^`{|}~", "jörg", "a b", ""]  # fmt: skip
    domains = ["client.example", "client-co.example", "-x.example", "x-.example", "a..b",
               "b.example.", "[192.0.2.1]", "ex_ample.com", "bücher.example", ""]  # fmt: skip
    params = ["", " SIZE=10240", " SIZE=1 BODY=8BITMIME", "  SIZE=1", " SIZE=1 ", "\tSIZE=1",
              " BODY=8BITMIME SMTPUTF8", " X=é"]  # fmt: skip
    ours, theirs = BlockDataSMTP(_Recorder()), SMTP(_Recorder())
    ours.local_part_limit = theirs.local_part_limit = 64
    for _ in range(3000):
        address = f"{rng.choice(locals_)}@{rng.choice(domains)}"
        arg = rng.choice([f"<{address}>", f" <{address}>", f"<{address}> ", address])
        arg += rng.choice(params)
        try:
            expected = theirs._getaddr(arg)
        except IndexError:  # aiosmtpd's parser fails on "carol@"; ours calls it bad syntax
            expected = (None, None)
        assert ours._getaddr(arg) == expected, arg


def test_spool_that_cannot_be_written_drops_the_data_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-DATA: the rest is read and dropped, nothing is left on disk."""
    scanner = DataScanner(None, 1001, spool=BlobStore(tmp_path).new_file, spool_bytes=10)
    scanner.feed(b"Subject: x\r\n\r\n" + b"a" * 50 + b"\r\n")

    def full(self: BlobFile, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobFile, "write", full)
    scanner.feed(b"more\r\n" * 10)
    assert scanner.state is DataState.NOT_STORED
    assert scanner.error is not None and scanner.error.errno == errno.ENOSPC
    assert scanner.content() is None
    assert list(tmp_path.iterdir()) == []


def test_spool_that_cannot_be_started_keeps_the_message_in_memory(tmp_path: Path) -> None:
    """No spool file (a read-only directory, say): as before, intake will answer for it."""

    def refused() -> BlobFile:
        raise OSError(errno.EROFS, "Read-only file system")

    scanner = DataScanner(None, 1001, spool=refused, spool_bytes=10)
    scanner.feed(b"Subject: x\r\n\r\n" + b"a" * 50 + b"\r\n..dot\r\n")
    assert scanner.content() == b"Subject: x\r\n\r\n" + b"a" * 50 + b"\r\n.dot\r\n"
