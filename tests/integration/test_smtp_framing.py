"""The edges of the SMTP dialogue on the real capture listener (issue 16, points 2, 4 and 9).

Command lines end with CRLF only; a session cannot be held open for ever, by idle chatter or
by a DATA that dribbles; a non-ASCII path needs the SMTPUTF8 parameter (RFC 6531).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.mail import replies
from mailledger.smtp.framing import CommandFraming, is_junk
from mailledger.store.directory import add_staff, find_tenant
from mailledger.store.models import ReceivedMessage
from mailledger.testing.dialogue import Dialogue
from mailledger.testing.intake import hold_first_write
from mailledger.testing.mail import make_email
from mailledger.testing.smtp import dot_stuff, running_server

pytestmark = pytest.mark.usefixtures("engine")

CONTACT = "carol@client.example"
RICHARD = "richard@acme.capture.example"


def with_capture(settings: Settings, **changes: Any) -> Settings:
    """The settings with some [capture] keys changed."""
    return settings.model_copy(update={"capture": settings.capture.model_copy(update=changes)})


def code(line: str) -> str:
    """A reply line as '500 5.5.2', the part tests compare."""
    return line[:9]


def message_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count(ReceivedMessage.id))) or 0


async def greeted(port: int) -> Dialogue:
    """A session past its banner and EHLO."""
    client = await Dialogue.open(port)
    assert (await client.reply()).startswith("220 ")
    assert (await client.say(b"EHLO client.test")).startswith("250 ")
    return client


# --- point 4: only CRLF ends a command line ---------------------------------------------


@pytest.mark.parametrize(
    ("raw", "answers"),
    [
        # The example: two LF-ended pieces, neither may run.
        (b"NOOP\nMAIL FROM:<carol@client.example>\n", 2),
        # The piece after a bare LF is the rest of the same CRLF line: it does not run either.
        (b"NOOP\nMAIL FROM:<carol@client.example>\r\n", 2),
        (b"NOOP\rMAIL FROM:<carol@client.example>\r\n", 1),
        (b"MAIL FROM:<carol@client.example>\r\r\n", 1),
        (b"MAIL FROM:<carol@client.example>\n", 1),
    ],
    ids=["lf-lf", "lf-crlf", "bare-cr", "cr-crlf", "lf-only"],
)
async def test_bare_newline_in_a_command_is_refused(
    settings: Settings, demo: DemoAddresses, raw: bytes, answers: int
) -> None:
    """Each piece of a line holding a bare CR or LF is answered 500 5.5.2 and none of it runs;
    the session goes on."""
    async with running_server(settings) as port:
        client = await greeted(port)
        await client.send(raw)
        got = [await client.reply() for _ in range(answers)]
        if raw.endswith(b"\n") and not raw.endswith(b"\r\n"):
            # Still inside the bad line until its CRLF: that piece is refused too.
            got.append(await client.say(b"NOOP"))
        # No MAIL ran: a recipient now is out of sequence.
        after = await client.say(f"RCPT TO:<{RICHARD}>".encode())
        usable = await client.say(f"MAIL FROM:<{CONTACT}>".encode())
        await client.close()
    assert got == [str(replies.BARE_NEWLINE_IN_COMMAND)] * len(got)
    assert code(after) == "503 5.5.1"
    assert code(usable) == "250 2.1.0"


async def test_data_after_a_refused_line_is_still_framed_by_crlf(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """A smuggling attempt in commands is refused, and a proper message after it is stored
    exactly: the DATA path keeps its own rule (only CRLF.CRLF ends the data)."""
    body = b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@client.example>\r\nend\r\n"
    async with running_server(settings) as port:
        client = await greeted(port)
        await client.send(b"RSET\nRCPT TO:<" + RICHARD.encode() + b">\r\n")
        refused = [await client.reply(), await client.reply()]
        assert code(await client.say(f"MAIL FROM:<{CONTACT}>".encode())) == "250 2.1.0"
        assert code(await client.say(f"RCPT TO:<{RICHARD}>".encode())) == "250 2.1.5"
        assert (await client.say(b"DATA")).startswith("354")
        await client.send(dot_stuff(body))
        data = await client.reply()
        await client.close()
    assert refused == [str(replies.BARE_NEWLINE_IN_COMMAND)] * 2
    # The bare LF inside DATA is content (then refused by screening), never a command.
    assert data == str(replies.BARE_NEWLINE)
    assert message_count(sessions) == 0


@pytest.mark.parametrize(
    ("pieces", "refused"),
    [
        ([b"NOOP\r\n"], [False]),
        ([b"NOOP\n"], [True]),
        ([b"NOOP\n", b"NOOP\r\n", b"NOOP\r\n"], [True, True, False]),
        ([b"NOOP\n", b"NOOP\n", b"NOOP\r\n", b"QUIT\r\n"], [True, True, True, False]),
        ([b"NO\rOP\r\n", b"NOOP\r\n"], [True, False]),
        ([b"NOOP\r\r\n"], [True]),
        ([b"\r\n"], [False]),
    ],
)
def test_command_framing(pieces: list[bytes], refused: list[bool]) -> None:
    """A piece is refused when it, or an earlier piece of the same CRLF line, holds a bare
    CR or LF."""
    framing = CommandFraming()
    assert [framing.refuses(piece) for piece in pieces] == refused


@pytest.mark.parametrize(("tail", "next_refused"), [(b"x\r\n", False), (b"x\n", True)])
def test_a_line_too_long_still_frames_the_next(tail: bytes, next_refused: bool) -> None:
    """A line too long to read is refused as too long; if it ended with a bare LF, the next
    piece is the rest of that line."""
    framing = CommandFraming()
    framing.overrun(tail)
    assert framing.refuses(b"NOOP\r\n") is next_refused


# --- point 9: a session cannot be held open for ever ------------------------------------


async def test_keepalive_noop_is_cut_by_the_session_time_cap(
    settings: Settings, demo: DemoAddresses
) -> None:
    """A client that sends NOOP now and then, well within the idle timeout, is closed with
    421 4.4.2 once the session has lasted max_session_seconds."""
    settings = with_capture(settings, max_session_seconds=1.0, timeout_seconds=60.0)
    answers: list[str] = []
    async with running_server(settings) as port:
        client = await greeted(port)
        started = time.monotonic()
        while time.monotonic() - started < 5.0:
            await client.send(b"NOOP\r\n")
            answer = await client.reply()
            answers.append(answer)
            if not answer.startswith("250"):
                break
            await asyncio.sleep(0.2)
        closed = await client.closed_by_server()
        await client.close()
    assert code(answers[-1]) == "421 4.4.2", answers
    assert closed
    assert time.monotonic() - started < 3.0


async def test_dribbling_data_is_cut_by_the_session_time_cap(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """A DATA that sends a byte now and then is cut with 421 4.4.2 at max_session_seconds,
    and nothing of it is stored."""
    settings = with_capture(settings, max_session_seconds=1.0, timeout_seconds=60.0)
    async with running_server(settings) as port:
        client = await greeted(port)
        assert code(await client.say(f"MAIL FROM:<{CONTACT}>".encode())) == "250 2.1.0"
        assert code(await client.say(f"RCPT TO:<{RICHARD}>".encode())) == "250 2.1.5"
        assert (await client.say(b"DATA")).startswith("354")
        started = time.monotonic()
        answer = ""
        for byte in b"Subject: slow\r\n\r\n" + b"x" * 40:
            await client.send(bytes([byte]))
            try:
                answer = await client.reply(within=0.2)
            except TimeoutError:
                continue
            break
        closed = await client.closed_by_server()
        await client.close()
    assert code(answer) == "421 4.4.2"
    assert closed
    assert time.monotonic() - started < 3.0
    assert message_count(sessions) == 0


async def test_a_message_being_stored_is_answered_before_the_cap_closes(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the time cap passes while a message is being stored, the sender still gets its
    250 (the message is kept), and then 421 4.4.2."""
    settings = with_capture(settings, max_session_seconds=1.0, timeout_seconds=60.0)
    async with running_server(settings) as port:
        held = hold_first_write(monkeypatch)
        client = await greeted(port)
        assert code(await client.say(f"MAIL FROM:<{CONTACT}>".encode())) == "250 2.1.0"
        assert code(await client.say(f"RCPT TO:<{RICHARD}>".encode())) == "250 2.1.5"
        assert (await client.say(b"DATA")).startswith("354")
        await client.send(dot_stuff(make_email()))
        await asyncio.sleep(1.5)  # the cap passes while the blob write is held
        held.set()
        answer = await client.reply()
        after = await client.reply()
        closed = await client.closed_by_server()
        await client.close()
    assert code(answer) == "250 2.0.0"
    assert after == str(replies.SESSION_TOO_LONG)
    assert closed
    assert message_count(sessions) == 1


async def test_junk_commands_are_capped(settings: Settings, demo: DemoAddresses) -> None:
    """Commands that make no progress (NOOP, RSET, HELP, VRFY, EXPN, unknown) are answered up
    to max_junk_commands; the next one gets 421 4.4.2 and the connection is closed."""
    settings = with_capture(settings, max_junk_commands=6)
    junk = [b"NOOP", b"RSET", b"HELP", b"VRFY <carol@client.example>", b"EXPN staff", b"FROB"]
    async with running_server(settings) as port:
        client = await greeted(port)
        answers = [await client.say(command) for command in junk]
        over = await client.say(b"NOOP")
        closed = await client.closed_by_server()
        await client.close()
    assert [a[:3] for a in answers] == ["250", "250", "250", "252", "502", "500"]
    assert over == str(replies.TOO_MANY_JUNK_COMMANDS)
    assert closed


async def test_an_accepted_message_resets_the_junk_count(
    settings: Settings, demo: DemoAddresses
) -> None:
    """A sender that does real work between its NOOPs and RSETs is never cut (as Postfix's
    junk count, reset when mail is accepted)."""
    settings = with_capture(settings, max_junk_commands=3)
    async with running_server(settings) as port:
        client = await greeted(port)
        answers: list[str] = []
        for _ in range(3):
            answers += [await client.say(b"RSET"), await client.say(b"NOOP")]
            answers.append(await client.say(f"MAIL FROM:<{CONTACT}>".encode()))
            answers.append(await client.say(f"RCPT TO:<{RICHARD}>".encode()))
            answers.append(await client.say(b"DATA"))
            await client.send(dot_stuff(make_email()))
            answers.append(await client.reply())
        await client.close()
    assert [a[:3] for a in answers] == ["250", "250", "250", "250", "354", "250"] * 3


async def test_unknown_commands_still_get_500(settings: Settings, demo: DemoAddresses) -> None:
    """An unrecognised command is 500 5.5.1 (RFC 5321 §4.2.4: 502 is for a command we know
    but do not implement, as EXPN)."""
    async with running_server(settings) as port:
        client = await greeted(port)
        unknown = await client.say(b"FROB")
        expn = await client.say(b"EXPN staff")
        await client.close()
    assert code(unknown) == "500 5.5.1"
    assert code(expn) == "502 5.5.1"


async def test_idle_timeout_says_421(settings: Settings, demo: DemoAddresses) -> None:
    """A silent client is told 421 4.4.2 before the connection closes (RFC 5321 §3.8)."""
    settings = with_capture(settings, timeout_seconds=0.5)
    async with running_server(settings) as port:
        client = await greeted(port)
        answer = await client.reply(within=5.0)
        closed = await client.closed_by_server()
        await client.close()
    assert answer == str(replies.TIMED_OUT)
    assert closed


async def test_each_command_restarts_the_idle_timeout(
    settings: Settings, demo: DemoAddresses
) -> None:
    """A client that sends a command more often than the idle timeout, for longer than it,
    is not timed out; once it falls silent it is told 421 4.4.2."""
    settings = with_capture(settings, timeout_seconds=1.0)
    answers: list[str] = []
    async with running_server(settings) as port:
        client = await greeted(port)
        for _ in range(8):  # two seconds in all: twice the timeout since the greeting
            await asyncio.sleep(0.25)
            await client.send(b"NOOP\r\n")
            answers.append(await client.reply())
        answer = await client.reply(within=5.0)
        closed = await client.closed_by_server()
        await client.close()
    assert all(a.startswith("250") for a in answers), answers
    assert answer == str(replies.TIMED_OUT)
    assert closed


@pytest.mark.parametrize(
    ("command", "junk"),
    [
        ("NOOP", True),
        ("RSET", True),
        ("HELP", True),
        ("VRFY", True),
        ("EXPN", True),
        ("FROB", True),
        ("EHLO", False),
        ("MAIL", False),
        ("RCPT", False),
        ("DATA", False),
        ("STARTTLS", False),
        ("AUTH", False),
        ("QUIT", False),
    ],
)
def test_junk_commands(command: str, junk: bool) -> None:
    """The commands that count towards the junk cap, as Postfix's smtpd_junk_command_limit."""
    known = {"NOOP", "RSET", "HELP", "VRFY", "EXPN", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"}
    known |= {"STARTTLS", "AUTH"}
    assert is_junk(command, known=command in known) is junk


# --- point 2: SMTPUTF8 ------------------------------------------------------------------


@pytest.fixture
def jorg(sessions: sessionmaker[Session], demo: DemoAddresses) -> str:
    """A staff member whose username is not ASCII; returns their capture address."""
    with sessions.begin() as session:
        tenant = find_tenant(session, "acme")
        add_staff(session, tenant, "jörg", ["jörg@acme.example"])
    return "jörg@acme.capture.example"


async def transaction(port: int, mail: str, rcpts: list[str]) -> list[str]:
    """MAIL and RCPT lines as given (UTF-8), and the answer to each."""
    client = await greeted(port)
    answers = [await client.say(mail.encode())]
    answers += [await client.say(f"RCPT TO:<{rcpt}>".encode()) for rcpt in rcpts]
    await client.close()
    return [code(a) for a in answers]


async def test_non_ascii_sender_needs_smtputf8(settings: Settings, jorg: str) -> None:
    """MAIL with a non-ASCII reverse path and no SMTPUTF8 parameter is 553 5.6.7; with the
    parameter it is accepted."""
    async with running_server(settings) as port:
        without = await transaction(port, "MAIL FROM:<jörg@client.example>", [])
        idn = await transaction(port, "MAIL FROM:<carol@bücher.example>", [])
        declared = await transaction(port, "MAIL FROM:<jörg@client.example> SMTPUTF8", [RICHARD])
    assert without == ["553 5.6.7"]
    assert idn == ["553 5.6.7"]
    assert declared == ["250 2.1.0", "250 2.1.5"]


async def test_non_ascii_recipient_needs_smtputf8(settings: Settings, jorg: str) -> None:
    """RCPT with a non-ASCII forward path in a transaction without SMTPUTF8 is 553 5.6.7; with
    it the address is routed like any other, case-insensitively."""
    async with running_server(settings) as port:
        without = await transaction(port, f"MAIL FROM:<{CONTACT}>", [jorg, RICHARD])
        declared = await transaction(
            port,
            f"MAIL FROM:<{CONTACT}> SMTPUTF8",
            [jorg, "JÖRG@acme.capture.example", "jürgen@acme.capture.example"],
        )
    assert without == ["250 2.1.0", "553 5.6.7", "250 2.1.5"]
    assert declared == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "550 5.1.1"]


async def test_smtputf8_message_is_stored_with_its_utf8_envelope(
    settings: Settings, jorg: str, sessions: sessionmaker[Session]
) -> None:
    """A message under SMTPUTF8 from and to UTF-8 addresses is stored with both as sent."""
    data = "From: Jörg <jörg@client.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    async with running_server(settings) as port:
        client = await greeted(port)
        assert code(await client.say("MAIL FROM:<jörg@client.example> SMTPUTF8".encode())) == (
            "250 2.1.0"
        )
        assert code(await client.say(f"RCPT TO:<{jorg}>".encode())) == "250 2.1.5"
        assert (await client.say(b"DATA")).startswith("354")
        await client.send(dot_stuff(data))
        answer = await client.reply()
        await client.close()
    assert code(answer) == "250 2.0.0"
    with sessions() as session:
        row = session.scalars(select(ReceivedMessage)).one()
    assert row.mail_from == "jörg@client.example"
    assert row.rcpt_to == [jorg]


async def test_a_path_that_is_not_utf8_is_refused(settings: Settings, demo: DemoAddresses) -> None:
    """Bytes that are not UTF-8 in a path are a syntax error even under SMTPUTF8 (RFC 6531
    §3.3 extends the address syntax with UTF-8, nothing else)."""
    async with running_server(settings) as port:
        client = await greeted(port)
        sender = await client.say(b"MAIL FROM:<j\xf6rg@client.example> SMTPUTF8")
        assert code(await client.say(f"MAIL FROM:<{CONTACT}> SMTPUTF8".encode())) == "250 2.1.0"
        rcpt = await client.say(b"RCPT TO:<r\xe9chard@acme.capture.example>")
        await client.close()
    assert sender == str(replies.BAD_SENDER_SYNTAX)
    assert rcpt == str(replies.BAD_RECIPIENT_SYNTAX)


async def test_utf8_local_parts_match_in_any_unicode_normal_form(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """jörg typed as o + combining diaeresis reaches jörg (RFC 6532 §3.1: NFC), and a
    username entered decomposed is stored composed."""
    decomposed = "jo\u0308rg"
    with sessions.begin() as session:
        add_staff(session, find_tenant(session, "acme"), "ma\u0308x", ["max@acme.example"])
    async with running_server(settings) as port:
        answers = await transaction(
            port,
            f"MAIL FROM:<{CONTACT}> SMTPUTF8",
            [f"{decomposed}@acme.capture.example", "m\u00e4x@acme.capture.example"],
        )
    assert answers == ["250 2.1.0", "550 5.1.1", "250 2.1.5"]  # no jörg yet; mäx composed
    with sessions.begin() as session:
        add_staff(session, find_tenant(session, "acme"), "j\u00f6rg", ["jorg@acme.example"])
    async with running_server(settings) as port:
        answers = await transaction(
            port, f"MAIL FROM:<{CONTACT}> SMTPUTF8", [f"{decomposed}@acme.capture.example"]
        )
    assert answers == ["250 2.1.0", "250 2.1.5"]
