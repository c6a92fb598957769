"""The capture listener over real sockets: every reply of the dialogue, and what is stored."""

from __future__ import annotations

import asyncio
import errno
import re
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from mailledger.capture.handler import CaptureHandler
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.mail import replies
from mailledger.routing.routes import RecipientRouter
from mailledger.smtp.listener import CaptureListener
from mailledger.smtp.protocol import rewrite_reply
from mailledger.store.blobs import BlobFile, BlobStore, BlobStoreError
from mailledger.store.inbox import Intake, IntakeError, Route, SessionFacts
from mailledger.store.models import MessageRoute, ReceivedMessage, RouteKind, TraceEntry
from mailledger.testing.dialogue import Dialogue
from mailledger.testing.intake import hold_first_write
from mailledger.testing.mail import make_email
from mailledger.testing.smtp import Transaction, running_server, send_raw_async

BANNER = re.compile(r"^mx\.capture\.example ESMTP mailledger ([0-9a-f]{12})$")
QUEUED = re.compile(r"^2\.0\.0 Queued as ([0-9A-F]{20})$")
CONTACT = "carol@client.example"

# Every test here runs against a database with the schema created.
pytestmark = pytest.mark.usefixtures("engine")


def with_capture(settings: Settings, **changes: Any) -> Settings:
    """The settings with some [capture] keys changed."""
    return settings.model_copy(update={"capture": settings.capture.model_copy(update=changes)})


def status(reply: tuple[int, str] | None) -> str:
    """A reply as '550 5.1.1', the part that tests compare."""
    assert reply is not None
    return f"{reply[0]} {reply[1][:5]}"


def stored(sessions: sessionmaker[Session], queue_id: str) -> ReceivedMessage:
    with sessions() as session:
        return session.scalars(
            select(ReceivedMessage)
            .where(ReceivedMessage.queue_id == queue_id)
            .options(selectinload(ReceivedMessage.routes), selectinload(ReceivedMessage.trace))
        ).one()


def message_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count(ReceivedMessage.id))) or 0


def queue_id_of(tx: Transaction) -> str:
    assert tx.data is not None, tx
    match = QUEUED.match(tx.data[1])
    assert tx.data[0] == 250 and match, tx.data
    return match.group(1)


async def test_banner_carries_a_trace_id(settings: Settings, demo: DemoAddresses) -> None:
    """The 220 greeting names our host and a per-connection trace id."""
    async with running_server(settings) as port:
        one = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        two = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    assert one.banner[0] == 220
    first, second = BANNER.match(one.banner[1]), BANNER.match(two.banner[1])
    assert first and second, (one.banner, two.banner)
    assert first.group(1) != second.group(1)


async def test_recipients_are_routed_at_rcpt(settings: Settings, demo: DemoAddresses) -> None:
    """User and log capture are accepted; unknown users, foreign domains, long locals refused."""
    rcpts = [
        demo.user_capture,
        demo.log_capture,
        "nobody@acme.capture.example",
        "someone@elsewhere.example",
        "a" * 65 + "@acme.capture.example",
        "Richard@ACME.capture.example",
        "Postmaster@acme.capture.example",
    ]
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, rcpts, make_email())
    assert [status(r) for r in tx.rcpt] == [
        "250 2.1.5",
        "250 2.1.5",
        "550 5.1.1",
        "550 5.7.1",
        "553 5.1.3",
        "250 2.1.5",
        "250 2.1.5",  # RFC 5321 §4.5.1: postmaster is always accepted
    ]
    assert status(tx.data) == "250 2.0.0"


async def test_too_many_recipients(settings: Settings, demo: DemoAddresses) -> None:
    """Past capture.max_recipients the server answers 452 4.5.3, and the rest still counts."""
    settings = with_capture(settings, max_recipients=2)
    async with running_server(settings) as port:
        tx = await send_raw_async(
            port, CONTACT, [demo.user_capture, demo.log_capture, demo.user_capture], make_email()
        )
    assert [status(r) for r in tx.rcpt] == ["250 2.1.5", "250 2.1.5", "452 4.5.3"]
    assert status(tx.data) == "250 2.0.0"


async def test_size_limit(settings: Settings, demo: DemoAddresses) -> None:
    """SIZE is advertised; a message exactly at the limit passes, one byte more is 552 5.3.4."""
    limit = 4096
    settings = with_capture(settings, max_message_bytes=limit)
    head = make_email(body="x\r\n")
    room = limit - len(head)
    lines, rest = divmod(room, 72)
    exact = head + (b"y" * 70 + b"\r\n") * (lines - 1)
    exact += b"y" * (70 + rest) + b"\r\n"
    assert len(exact) == limit
    over = exact[:-2] + b"z\r\n"
    async with running_server(settings) as port:
        announced = await send_raw_async(
            port, CONTACT, [demo.user_capture], over, mail_options=[f"SIZE={len(over)}"]
        )
        unannounced = await send_raw_async(port, CONTACT, [demo.user_capture], over)
        at_limit = await send_raw_async(
            port, CONTACT, [demo.user_capture], exact, mail_options=[f"SIZE={len(exact)}"]
        )
    assert announced.esmtp_features["size"] == str(limit)
    assert status(announced.mail) == "552 5.3.4"
    assert status(unannounced.data) == "552 5.3.4"
    assert status(at_limit.data) == "250 2.0.0"


FILLER = (b"f" * 998 + b"\r\n") * 1100  # past the spool threshold: the rest goes to disk


def spool_files(settings: Settings) -> list[Path]:
    return list(Path(settings.storage.blob_dir).glob(".spool-*"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"From: carol@client.example\r\nSubject: x\r\n\r\nline\nsmuggled\r\n", "550 5.5.2"),
        (b"From: carol@client.example\r\nSubject: x\r\n\r\nline\rsmuggled\r\n", "550 5.5.2"),
        (b"From: carol@client.example\r\nSubject: x\r\n\r\nnul \0 here\r\n", "550 5.6.0"),
        (b"Received: from a by b\r\n" * 51 + b"Subject: loop\r\n\r\nbody\r\n", "554 5.4.6"),
        (b"X-Long: " + b"a" * 990 + b"\r\n" + b"X-Fill: b\r\n" * 30000 + b"\r\nx\r\n", "552 5.3.4"),
        (b"Subject: x\r\n\r\n" + b"a" * 1200 + b"\r\n", "500 5.5.6"),
        # The same checks on messages past the spool threshold, which reach them on disk.
        (b"Subject: x\r\n\r\n" + FILLER + b"line\nsmuggled\r\n", "550 5.5.2"),
        (b"Subject: x\r\n\r\n" + FILLER + b"line\rsmuggled\r\n", "550 5.5.2"),
        (b"Subject: x\r\n\r\n" + FILLER + b"nul \0 here\r\n", "550 5.6.0"),
        (b"Received: from a by b\r\n" * 51 + b"Subject: loop\r\n\r\n" + FILLER, "554 5.4.6"),
        (b"X-Fill: b\r\n" * 30000 + b"\r\n" + FILLER, "552 5.3.4"),
    ],
    ids=[
        "bare-lf",
        "bare-cr",
        "nul",
        "too-many-received",
        "headers-too-big",
        "line-too-long",
        "spooled-bare-lf",
        "spooled-bare-cr",
        "spooled-nul",
        "spooled-too-many-received",
        "spooled-headers-too-big",
    ],
)
async def test_unsafe_bytes_are_refused(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    data: bytes,
    expected: str,
) -> None:
    """DATA that a parser could misread is refused with its own code and never stored."""
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], data)
    assert status(tx.data) == expected
    assert message_count(sessions) == 0
    assert spool_files(settings) == []


@pytest.mark.parametrize(
    "sender",
    [
        b"<foo>",
        b"<a@>",
        b"a@",
        b"<a b@client.example>",
        b"<carol@@client.example>",
        b"<@client.example>",
    ],
)
async def test_malformed_sender(settings: Settings, demo: DemoAddresses, sender: bytes) -> None:
    """A reverse path that is not one address is 553 5.1.7, whichever parser notices."""
    async with running_server(settings) as port:
        client = await Dialogue.open(port)
        await client.reply()
        await client.say(b"EHLO client.test")
        reply = await client.say(b"MAIL FROM:" + sender)
        await client.close()
    assert reply == str(replies.BAD_SENDER_SYNTAX)


async def test_raw_bytes_stored_before_250(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """After 250 the exact bytes, the session facts, the routes and the trace are committed."""
    data = make_email(body="Hi\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n")
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], data, helo="mta.client.test")
        # Read at once, on another connection, while the server still runs.
        row = stored(sessions, queue_id_of(tx))
    banner = BANNER.match(tx.banner[1])
    assert banner
    assert blobs.get(row.blob) == data
    assert row.size == len(data)
    assert row.trace_id == banner.group(1)
    assert row.helo == "mta.client.test"
    assert row.mail_from == CONTACT
    assert row.rcpt_to == [demo.user_capture]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", row.peer)
    assert row.tls == ""
    assert [(r.kind, r.rcpt) for r in row.routes] == [(RouteKind.USER, demo.user_capture)]
    intake = [t for t in row.trace if t.step == "intake"]
    assert len(intake) == 1
    assert intake[0].decision == "stored"
    assert f"{len(data)} bytes" in intake[0].detail


async def test_two_capture_addresses_one_message(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """A message for richard@ and log@ is stored once, with both routes; a repeat adds none."""
    rcpts = [demo.user_capture, demo.log_capture, demo.user_capture.upper()]
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, rcpts, make_email())
        row = stored(sessions, queue_id_of(tx))
    assert [status(r) for r in tx.rcpt] == ["250 2.1.5"] * 3
    assert message_count(sessions) == 1
    assert sorted((r.kind, r.rcpt) for r in row.routes) == [
        (RouteKind.LOG, demo.log_capture),
        (RouteKind.USER, demo.user_capture),
    ]


async def test_null_sender_accepted(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """A bounce (MAIL FROM:<>) is accepted and stored with an empty reverse path."""
    async with running_server(settings) as port:
        tx = await send_raw_async(port, "", [demo.user_capture], make_email())
        row = stored(sessions, queue_id_of(tx))
    assert status(tx.mail) == "250 2.1.0"
    assert row.mail_from == ""


async def test_smtputf8_headers(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """8-bit UTF-8 headers under SMTPUTF8 (RFC 6531) are accepted and kept byte for byte."""
    data = (
        "From: Jörg Müller <carol@client.example>\r\n"
        "To: richard@acme.example\r\n"
        "Subject: Grüße aus Köln ✓\r\n"
        "Message-ID: <utf8-1@client.example>\r\n"
        "\r\n"
        "Schöne Grüße\r\n"
    ).encode()
    async with running_server(settings) as port:
        tx = await send_raw_async(
            port, CONTACT, [demo.user_capture], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
        row = stored(sessions, queue_id_of(tx))
    assert "smtputf8" in tx.esmtp_features
    assert blobs.get(row.blob) == data


async def test_blob_store_failure_is_temporary(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the blob store fails the sender gets 451 4.3.0, never 250, and we keep serving."""

    def broken(self: BlobStore, blobs: Sequence[bytes]) -> list[str | BlobStoreError]:
        raise OSError(30, "Read-only file system")

    async with running_server(settings) as port:
        with monkeypatch.context() as patch:
            patch.setattr(BlobStore, "put_many", broken)
            failed = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        assert message_count(sessions) == 0
        later = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    assert failed.data == (451, str(replies.STORAGE_FAILED)[4:])
    assert status(later.data) == "250 2.0.0"
    assert message_count(sessions) == 1


async def test_blob_dir_unusable(settings: Settings, demo: DemoAddresses, tmp_path: Any) -> None:
    """A blob directory that cannot be created (a file is in the way) gives 451 4.3.0."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the blob directory should be\n")
    storage = settings.storage.model_copy(update={"blob_dir": str(blocker / "blobs")})
    settings = settings.model_copy(update={"storage": storage})
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
        again = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    assert status(tx.data) == "451 4.3.0"
    assert status(again.data) == "451 4.3.0"


async def test_handler_exception_is_451_with_trace(
    settings: Settings, demo: DemoAddresses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected fault answers 451 4.3.0 with the trace id, never the exception's text."""

    def explode(self: RecipientRouter, rcpt: str) -> Route:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(RecipientRouter, "route", explode)
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    banner = BANNER.match(tx.banner[1])
    assert banner
    assert tx.rcpt == [(451, f"4.3.0 Temporary local error (trace {banner.group(1)})")]
    assert "secret" not in tx.rcpt[0][1]


async def test_directory_unavailable(
    settings: Settings, demo: DemoAddresses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error while routing a recipient is a temporary 451, so the sender retries."""

    def unavailable(self: RecipientRouter, rcpt: str) -> Route:
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(RecipientRouter, "route", unavailable)
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    assert tx.rcpt == [(451, str(replies.DIRECTORY_UNAVAILABLE)[4:])]


async def test_source_address_binding(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session]
) -> None:
    """A client bound to another loopback address is recorded with that peer address."""
    async with running_server(settings) as port:
        tx = await send_raw_async(
            port, CONTACT, [demo.user_capture], make_email(), source_address="127.0.0.7"
        )
        row = stored(sessions, queue_id_of(tx))
    assert row.peer.startswith("127.0.0.7:")


# --- the dialogue, byte by byte -------------------------------------------------------


async def test_bare_replies_get_enhanced_codes(settings: Settings, demo: DemoAddresses) -> None:
    """aiosmtpd's own refusals reach the client with RFC 3463 enhanced status codes."""
    async with running_server(settings) as port:
        client = await Dialogue.open(port)
        assert (await client.reply()).startswith("220 ")
        assert (await client.say(b"MAIL FROM:<carol@client.example>")).startswith("503 5.5.1")
        assert (await client.say(b"EHLO client.test")).startswith("250 ")
        assert (await client.say(b"DATA")).startswith("503 5.5.1")
        assert (await client.say(b"RCPT TO:<richard@acme.capture.example>")).startswith("503 5.5.1")
        assert (await client.say(b"FROB")).startswith("500 5.5.1")
        assert (await client.say(b"MAIL FROM:<carol@client.example> SIZE=99999999999")) == (
            str(replies.MESSAGE_TOO_BIG)
        )
        assert (await client.say(b"MAIL FROM:<carol@client.example> FOO=1")).startswith("555 5.5.4")
        assert (await client.say(b"MAIL FROM:<carol@client.example>")).startswith("250 2.1.0")
        assert (await client.say(b"MAIL FROM:<carol@client.example>")).startswith("503 5.5.1")
        assert (await client.say(b"RCPT TO:<a@>")) == str(replies.BAD_RECIPIENT_SYNTAX)
        assert (await client.say(b"RSET")) == "250 2.0.0 OK"
        assert (await client.say(b"QUIT")) == "221 2.0.0 Bye"
        await client.close()


@pytest.mark.parametrize(
    ("aiosmtpd", "ours"),
    [
        ("552 Error: Too much mail data", "552 5.3.4 Message too big"),
        ("500 Line too long (see RFC5321 4.5.3.1.6)", str(replies.LINE_TOO_LONG)),
        ("503 Error: need RCPT command", "503 5.5.1 Need RCPT command first"),
        ('500 Error: command "FROB" not recognized', "500 5.5.1 Command not recognized"),
        ("501 Syntax: HELO hostname", "501 5.5.4 Syntax: HELO hostname"),
        (
            "504 5.5.4 Unrecognized authentication type",
            "504 5.5.4 Unrecognized authentication type",
        ),
        ("250 2.1.5 Recipient OK", "250 2.1.5 Recipient OK"),
        ("250-SIZE 1024", "250-SIZE 1024"),
        ("220 mx ESMTP mailledger abc", "220 mx ESMTP mailledger abc"),
    ],
)
def test_rewrite_reply(aiosmtpd: str, ours: str) -> None:
    """Bare refusals get an enhanced code; replies that have one, and 2xx lines, pass as-is."""
    assert rewrite_reply(aiosmtpd) == ours


def test_malformed_address_depends_on_command() -> None:
    """aiosmtpd's one 'malformed address' reply becomes 5.1.7 for MAIL and 5.1.3 for RCPT."""
    line = "553 5.1.3 Error: malformed address"
    assert rewrite_reply(line, in_mail=True) == str(replies.BAD_SENDER_SYNTAX)
    assert rewrite_reply(line) == str(replies.BAD_RECIPIENT_SYNTAX)


# --- the listener and the intake on their own ------------------------------------------


def build_listener(
    settings: Settings, sessions: sessionmaker[Session], blobs: BlobStore
) -> tuple[CaptureListener, Intake]:
    intake = Intake(sessions, blobs)
    router = RecipientRouter(sessions)
    handler = CaptureHandler(router, intake, settings.capture)
    return CaptureListener(settings, handler), intake


async def test_stop_lets_data_finish_and_refuses_newcomers(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """On stop: idle sessions get 421, new ones 421 4.3.2, a DATA in progress gets its 250."""
    listener, intake = build_listener(settings, sessions, blobs)
    intake.start()
    [(_, port)] = await listener.start()
    busy, idle = await Dialogue.open(port), await Dialogue.open(port)
    for client in (busy, idle):
        await client.reply()
        await client.say(b"EHLO client.test")
    await busy.say(b"MAIL FROM:<carol@client.example>")
    await busy.say(b"RCPT TO:<richard@acme.capture.example>")
    assert (await busy.say(b"DATA")).startswith("354")
    busy.writer.write(b"Subject: half\r\n\r\nfirst half\r\n")
    await busy.writer.drain()
    await asyncio.sleep(0.1)

    stopping = asyncio.create_task(listener.stop(grace_seconds=10))
    await asyncio.sleep(0.1)
    assert (await idle.reply()) == str(replies.SHUTTING_DOWN)
    late = await Dialogue.open(port)
    assert (await late.reply()) == str(replies.SHUTTING_DOWN)
    assert not stopping.done()

    busy.writer.write(b"second half\r\n.\r\n")
    assert (await busy.reply()).startswith("250 2.0.0 Queued as ")
    assert (await busy.reply()) == str(replies.SHUTTING_DOWN)
    await asyncio.wait_for(stopping, 5)
    await intake.close()
    for client in (busy, idle, late):
        await client.close()
    assert message_count(sessions) == 1
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_max_sessions(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
) -> None:
    """Past capture.max_sessions a new connection is told 421 and closed; a slot frees up."""
    listener, intake = build_listener(with_capture(settings, max_sessions=1), sessions, blobs)
    intake.start()
    [(_, port)] = await listener.start()
    first = await Dialogue.open(port)
    assert (await first.reply()).startswith("220 ")
    second = await Dialogue.open(port)
    assert (await second.reply()).startswith("421 4.3.2")
    assert (await first.say(b"QUIT")).startswith("221")
    await first.close()
    await asyncio.sleep(0.1)
    third = await Dialogue.open(port)
    assert (await third.reply()).startswith("220 ")
    await third.close()
    await second.close()
    await listener.stop(1)
    await intake.close()


async def test_group_commit_isolates_a_bad_row(
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One row that cannot be inserted fails only its own caller; its batch-mates are stored."""
    # Hold the writer on the first message so the next five queue up into one batch.
    gate = hold_first_write(monkeypatch)
    woken = 0

    def on_stored() -> None:
        nonlocal woken
        woken += 1

    intake = Intake(sessions, blobs, on_stored=on_stored)
    intake.start()
    router = RecipientRouter(sessions)
    good = router.route(demo.user_capture)
    assert isinstance(good, Route)
    bad = Route(tenant_id=9999, kind=RouteKind.LOG, staff_id=None, rcpt="log@nowhere.example")

    def facts(n: int) -> SessionFacts:
        return SessionFacts(f"127.0.0.1:{n}", "h", CONTACT, [good.rcpt], "", f"t{n}")

    first = asyncio.create_task(intake.store(facts(0), [good], b"Subject: 0\r\n\r\nx\r\n"))
    await asyncio.sleep(0.1)
    others = [
        asyncio.create_task(
            intake.store(facts(n), [bad if n == 3 else good], b"Subject: %d\r\n\r\nx\r\n" % n)
        )
        for n in range(1, 6)
    ]
    await asyncio.sleep(0.1)
    gate.set()
    results = await asyncio.gather(first, *others, return_exceptions=True)
    await intake.close()

    assert isinstance(results[3], IntakeError)
    ids = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, str) and len(r) == 20 for r in ids)
    assert len(set(ids)) == 5
    with sessions() as session:
        assert session.scalars(select(ReceivedMessage.queue_id)).all().__len__() == 5
        assert session.scalar(select(func.count(MessageRoute.id))) == 5
        assert session.scalar(select(func.count(TraceEntry.id))) == 5
    assert woken >= 2


async def test_intake_refuses_after_close(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """A closed intake fails fast instead of leaving a session waiting."""
    intake = Intake(sessions, blobs)
    intake.start()
    await intake.close()
    route = Route(tenant_id=1, kind=RouteKind.LOG, staff_id=None, rcpt="log@x.example")
    facts = SessionFacts("127.0.0.1:1", "", "", [], "", "t")
    with pytest.raises(IntakeError):
        await intake.store(facts, [route], b"x\r\n")


# --- STARTTLS ----------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for mx.capture.example, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mx.capture.example",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_only_with_a_certificate(
    settings: Settings, demo: DemoAddresses, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """STARTTLS is offered only with [tls] set; after it the trace id stays and TLS is recorded."""
    async with running_server(settings) as port:
        plain = await send_raw_async(port, CONTACT, [demo.user_capture], make_email())
    assert "starttls" not in plain.esmtp_features

    cert, key = self_signed(tmp_path)
    tls = settings.tls.model_copy(update={"cert_file": str(cert), "key_file": str(key)})
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.check_hostname = False
    async with running_server(settings.model_copy(update={"tls": tls})) as port:
        tx = await send_raw_async(
            port, CONTACT, [demo.user_capture], make_email(), starttls=client_context
        )
        row = stored(sessions, queue_id_of(tx))
    banner = BANNER.match(tx.banner[1])
    assert banner
    assert row.trace_id == banner.group(1)
    assert row.tls.startswith("TLSv1."), row.tls
    assert row.helo == "client.test"
    # The capture listener takes no logins, with TLS or without.
    assert "auth" not in tx.esmtp_features


async def test_large_message_is_spooled_and_stored_exactly(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dot-stuffed lines before and after the spool starts come back exactly as sent."""
    data = make_email(body="Hi\r\n.one dot\r\n" + FILLER.decode() + "..two dots\r\n.\r\nend\r\n")
    started: list[BlobFile] = []
    original = BlobStore.new_file

    def counted(self: BlobStore) -> BlobFile:
        started.append(original(self))
        return started[-1]

    monkeypatch.setattr(BlobStore, "new_file", counted)
    async with running_server(settings) as port:
        tx = await send_raw_async(port, CONTACT, [demo.user_capture], data)
        row = stored(sessions, queue_id_of(tx))
    assert len(started) == 1  # it went through the spool
    assert blobs.get(row.blob) == data
    assert row.size == len(data)
    assert spool_files(settings) == []


async def test_spool_on_a_full_disk_is_452_and_the_session_goes_on(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills mid-DATA: 452 4.3.1 after the whole DATA, nothing kept, then 250."""
    written: list[int] = []
    original = BlobFile.write

    def fills_up(self: BlobFile, data: bytes) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(data))
        original(self, data)

    big = make_email(body=FILLER.decode() * 2)
    async with running_server(settings) as port:
        with monkeypatch.context() as patch:
            patch.setattr(BlobFile, "write", fills_up)
            full = await send_raw_async(port, CONTACT, [demo.user_capture], big)
        later = await send_raw_async(port, CONTACT, [demo.user_capture], big)
    assert status(full.data) == "452 4.3.1"
    assert status(later.data) == "250 2.0.0"
    assert message_count(sessions) == 1
    assert spool_files(settings) == []


async def test_message_id_is_kept_at_intake_even_for_mail_quarantined_before_parsing(
    settings: Settings,
    demo: DemoAddresses,
    sessions: sessionmaker[Session],
) -> None:
    """The ID a sender knows finds every message: read at intake, kept through quarantine."""
    depth = settings.capture.max_mime_depth + 5
    head = (
        b"From: carol@client.example\r\nTo: richard@acme.example\r\nSubject: deep\r\n"
        b"Message-ID: <bomb-1@client.example>\r\n"
    )
    body = b"".join(
        f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        for i in range(depth)
    )
    bomb = head + body + b"Content-Type: text/plain\r\n\r\nhi\r\n"
    # Past the spool threshold: the head is read from the file the listener wrote.
    large = (
        make_email(message_id="large-1@client.example", body="x" * 78 + "\r\n")
        + (b"y" * 76 + b"\r\n") * 16_000
    )
    async with running_server(settings) as port:
        first = await send_raw_async(port, CONTACT, [demo.user_capture], bomb)
        second = await send_raw_async(port, CONTACT, [demo.user_capture], large)
        rows = [stored(sessions, queue_id_of(tx)) for tx in (first, second)]
        assert [row.message_id for row in rows] == [
            "bomb-1@client.example",
            "large-1@client.example",
        ]
        for _ in range(200):  # processing runs in the server: wait for its verdict
            row = stored(sessions, queue_id_of(first))
            if row.state.value != "received":
                break
            await asyncio.sleep(0.05)
    assert row.reason.startswith("mime-too-deep")
    assert row.message_id == "bomb-1@client.example"
