"""The relay's submission side end to end: real TLS, real AUTH, real DNS, a recording MX.

``serve`` runs in the test's event loop with the capture listener, the STARTTLS (587-style)
and implicit-TLS (465-style) submission listeners, the processing worker and the delivery
worker. The world: tenant acme (richard, and his colleague alice), tenant globex (bob), a DKIM
key for acme.example published on the test DNS server, and client.example's MX a recorder.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import dkim
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli import staff as staff_commands
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains import keys
from mailledger.forwarding import handback
from mailledger.relay.credentials import hash_password, verify_password
from mailledger.service.server import serve
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Direction,
    DkimKey,
    ForwardingCheck,
    ForwardingConfirmation,
    MessageState,
    OutboundKind,
    OutboundMessage,
    OutboundState,
    ReceivedMessage,
    Staff,
    Tenant,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import dkim_sign, gmail_forward, make_key
from mailledger.testing.mail import make_email
from mailledger.testing.recorder import Recorder, start_recorders
from mailledger.testing.smtp import send_raw_async
from mailledger.testing.submission import Submission, submit_async
from mailledger.testing.tls import write_self_signed

HOSTNAME = "mx.capture.example"
CLIENT_MX = "127.0.0.51"
GMAIL_IP = "127.0.0.10"
GOOGLE_KEY = make_key("google.com", "20230601")
RICHARD_LOGIN = "richard@acme.capture.example"
ALICE_LOGIN = "alice@acme.capture.example"
BOB_LOGIN = "bob@globex.capture.example"
PASSWORDS = {
    RICHARD_LOGIN: "richard-relay-password",
    ALICE_LOGIN: "alice-relay-password",
    BOB_LOGIN: "bob-relay-password",
}

T = TypeVar("T")


@dataclass
class World:
    """The running service and what the test talks to."""

    settings: Settings
    sessions: sessionmaker[Session]
    capture_port: int
    submission_port: int
    implicit_port: int
    mx: Recorder
    dns: DNSServer


@dataclass
class Remote:
    """The world outside: the test DNS server, and client.example's MX as a recorder."""

    dns: DNSServer
    smtp_port: int
    mx: Recorder


@pytest.fixture
def remote() -> Iterator[Remote]:
    """client.example's MX points at the recorder; acme.example's SPF names loopback."""
    port, started = start_recorders([CLIENT_MX])
    with DNSServer() as server:
        server.add("client.example", "MX", "10 mx.client.example.")
        server.add("mx.client.example", "A", CLIENT_MX)
        server.add("acme.example", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
        # The staff mailboxes (acme.example at its provider) are on the recorder too.
        server.add("acme.example", "MX", "10 mx.client.example.")
        server.add("gmail.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add(GOOGLE_KEY.record_name, "TXT", GOOGLE_KEY.txt)
        yield Remote(server, port, started[0])
    for recorder in started:
        recorder.close()


def relay_settings(
    settings: Settings, dns: DNSServer, smtp_port: int, tmp_path: Path, **relay: Any
) -> Settings:
    """Settings with TLS, both submission listeners on port 0, fast delivery and a low lock."""
    cert, key = write_self_signed(HOSTNAME, tmp_path / "tls")
    return settings.model_copy(
        update={
            "tls": settings.tls.model_copy(update={"cert_file": str(cert), "key_file": str(key)}),
            "dns": dns.settings(timeout_seconds=1.0),
            "service": settings.service.model_copy(update={"hostname": HOSTNAME}),
            "submission": settings.submission.model_copy(
                update={
                    "listen": ["127.0.0.1:0"],
                    "listen_tls": ["127.0.0.1:0"],
                    "max_auth_failures": 3,
                }
            ),
            "relay": settings.relay.model_copy(
                update={
                    "smtp_port": smtp_port,
                    "poll_interval_seconds": 0.05,
                    "retry_schedule_seconds": [0.2],
                    "connect_timeout_seconds": 2.0,
                    # Keys live in the database, sealed: this node has no key directory.
                    "dkim_key_dir": str(tmp_path / "no-key-directory"),
                    **relay,
                }
            ),
        }
    )


def seed_world(sessions: sessionmaker[Session], settings: Settings, dns: DNSServer) -> None:
    """Passwords for richard, alice and bob; acme.example's DKIM key published (not verified)."""
    with sessions.begin() as session:
        acme = directory.find_tenant(session, "acme")
        directory.add_staff(session, acme, "alice", ["alice@acme.example"])
        globex = directory.add_tenant(
            session, "globex", "globex.capture.example", ["globex.example"]
        )
        directory.add_staff(session, globex, "bob", ["bob@globex.example"])
        for login, password in PASSWORDS.items():
            user, _, domain = login.partition("@")
            tenant = session.scalars(select(Tenant).where(Tenant.capture_domain == domain)).one()
            staff = directory.find_staff(session, tenant, user)
            staff.password_hash = hash_password(password)
        box = SecretBox.from_file(settings.secrets.key_file)
        key = keys.create_key(session, acme, "acme.example", box, selector="s1")
        dns.add(keys.record_name(key.selector, key.domain), "TXT", key.public_record)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[list[tuple[str, int]]]:
    """``serve`` in this loop; yields every bound address (capture, 587-style, 465-style)."""
    stop = asyncio.Event()
    bound: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(settings, ready=bound.set_result, stop=stop))
    done, _ = await asyncio.wait({task, bound}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        raise RuntimeError("the server stopped before it was ready")
    try:
        yield bound.result()
    finally:
        stop.set()
        await task


@pytest.fixture
async def world(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    remote: Remote,
    tmp_path: Path,
) -> AsyncIterator[World]:
    """The whole service running against the test world (the demo tenant is acme)."""
    assert demo.staff_address == "richard@acme.example"
    configured = relay_settings(settings, remote.dns, remote.smtp_port, tmp_path)
    seed_world(sessions, configured, remote.dns)
    async with running(configured) as addresses:
        yield World(
            configured,
            sessions,
            addresses[0][1],
            addresses[1][1],
            addresses[2][1],
            remote.mx,
            remote.dns,
        )


async def eventually(probe: Callable[[], T | None], seconds: float = 10.0) -> T:
    """Poll ``probe`` (in a thread) until it returns something."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(probe)
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


def email_from(sender: str, *, to: str = "Carol Client <carol@client.example>", **kw: Any) -> bytes:
    """A message from a staff member to carol."""
    return make_email(sender=sender, to=to, message_id=kw.pop("message_id", None), **kw)


def counts(sessions: sessionmaker[Session]) -> tuple[int, int]:
    """How many outbound rows and received messages exist."""
    with sessions() as session:
        outbound = session.scalar(select(func.count()).select_from(OutboundMessage))
        received = session.scalar(select(func.count()).select_from(ReceivedMessage))
        return int(outbound or 0), int(received or 0)


async def send(world: World, login: str, mail_from: str, data: bytes, **kw: Any) -> Submission:
    """Submit over STARTTLS with the login's password (or ``password=``)."""
    return await submit_async(
        kw.pop("port", world.submission_port),
        user=login,
        password=kw.pop("password", PASSWORDS.get(login, "")),
        mail_from=mail_from,
        rcpt_to=kw.pop("rcpt_to", ["carol@client.example"]),
        data=data,
        **kw,
    )


# --- the happy path ---------------------------------------------------------------------------


async def test_submitted_mail_is_signed_delivered_and_recorded(world: World) -> None:
    """STARTTLS + AUTH PLAIN: DKIM-signed at the MX, log@ not relayed, one outbound activity.

    The node has no key directory: it signs with the key sealed in the database.
    """
    raw = email_from("Richard Smith <richard@acme.example>", subject="Your quote")
    result = await send(
        world,
        RICHARD_LOGIN,
        "richard@acme.example",
        raw,
        rcpt_to=["carol@client.example", "log@acme.capture.example"],
    )
    assert result.auth[0] == 235
    assert result.accepted, result
    queue_id = result.data[1].split()[-1] if result.data else ""

    delivered = await world.mx.wait_for_async(lambda ts: any(t.accepted for t in ts))
    assert delivered[0].rcpt_tos == ["carol@client.example"]  # the log@ copy stays here
    assert delivered[0].mail_from == "richard@acme.example"
    data = delivered[0].data
    assert data.startswith(b"DKIM-Signature:")
    header = data.split(b"\r\n\r\n", 1)[0]
    assert b"d=acme.example" in header
    assert b" l=" not in header and b";l=" not in header
    assert b"h=from:from:" in header.replace(b"\r\n\t", b"").replace(b" ", b"")
    resolver = Resolver(world.settings.dns)
    assert dkim.verify(data, dnsfunc=resolver.dkim_dnsfunc)
    assert not await asyncio.to_thread(Path(world.settings.relay.dkim_key_dir).exists)

    def activity() -> Activity | None:
        with world.sessions() as session:
            return session.scalars(select(Activity)).first()

    recorded = await eventually(activity)
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        assert recorded.direction is Direction.OUTBOUND
        assert recorded.staff_id == richard.id
        assert recorded.subject == "Your quote"
        assert recorded.auth["trust"] == "submission"
        rows = session.scalars(select(OutboundMessage)).all()
        assert [(r.kind, r.queue_id) for r in rows] == [(OutboundKind.RELAY, queue_id)]
        assert rows[0].signing == "signed d=acme.example s=s1"
        key = session.scalars(select(DkimKey)).one()
        assert key.verified_at is not None  # the first signature checked the record

    def linked() -> int | None:
        with world.sessions() as session:
            return session.scalars(select(OutboundMessage.activity_id)).first()

    assert await eventually(linked) == recorded.id

    # The same email arriving as a log@ BCC (here: its signed copy, from the tenant's own
    # network) merges into the one activity.
    bcc = await send_raw_async(
        world.capture_port, "richard@acme.example", ["log@acme.capture.example"], data
    )
    assert bcc.accepted

    def sources() -> int | None:
        with world.sessions() as session:
            n = session.scalar(select(func.count()).select_from(ActivitySource))
            return n if n == 2 else None

    assert await eventually(sources) == 2
    with world.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Activity)) == 1


async def test_implicit_tls_with_auth_login(world: World) -> None:
    """The 465-style listener speaks TLS from the first byte and takes AUTH LOGIN."""
    raw = email_from("richard.smith@gmail.com")
    result = await send(
        world,
        RICHARD_LOGIN,
        "richard.smith@gmail.com",
        raw,
        port=world.implicit_port,
        implicit_tls=True,
        mechanism="LOGIN",
    )
    assert result.auth[0] == 235
    assert "STARTTLS" not in {k.upper() for k in result.ehlo_features}
    assert result.accepted, result
    with world.sessions() as session:
        row = session.scalars(select(OutboundMessage)).one()
        # No key for gmail.com: the default policy holds it, and says why.
        assert row.state is OutboundState.HELD
        assert row.signing == "held: no DKIM key for gmail.com"


# --- abuse: every case refused with its code, nothing queued ---------------------------------


async def test_no_auth_before_starttls_and_no_mail_before_auth(world: World) -> None:
    """587-style: AUTH is not offered in the clear, and mail without a login is refused."""
    clear = await submit_async(
        world.submission_port,
        user=RICHARD_LOGIN,
        password=PASSWORDS[RICHARD_LOGIN],
        mail_from="richard@acme.example",
        rcpt_to=["carol@client.example"],
        data=email_from("richard@acme.example"),
        starttls=False,
    )
    assert "auth" not in clear.ehlo_features
    assert clear.auth[:1] == (530,) and "5.7.0" in clear.auth[1]
    assert clear.mail[0] == 530
    relay = await submit_async(
        world.submission_port,
        user=None,
        mail_from="richard@acme.example",
        rcpt_to=["carol@client.example"],
        data=email_from("richard@acme.example"),
    )
    assert "auth" in relay.ehlo_features
    assert relay.mail[0] == 530 and relay.mail[1].startswith("5.7.0 Authentication required")
    implicit = await submit_async(
        world.implicit_port,
        user=None,
        mail_from="richard@acme.example",
        rcpt_to=["carol@client.example"],
        data=email_from("richard@acme.example"),
        implicit_tls=True,
    )
    assert implicit.mail[0] == 530
    assert counts(world.sessions) == (0, 0)


@dataclass(frozen=True)
class Abuse:
    """One impersonation attempt and the refusal it must get."""

    login: str
    mail_from: str
    sender: str  # the From header
    step: str  # "mail" or "data": where it is refused
    reply: int
    names: str  # what the reply text must name


@pytest.mark.parametrize(
    "case",
    [
        # One tenant sending as another: bob (globex) as richard (acme).
        Abuse(
            BOB_LOGIN, "richard@acme.example", "bob@globex.example", "mail", 550, "richard@acme.ex"
        ),
        Abuse(
            BOB_LOGIN, "bob@globex.example", "richard@acme.example", "data", 550, "richard@acme.ex"
        ),
        Abuse(BOB_LOGIN, "bob@globex.example", "ceo@acme.example", "data", 550, "ceo@acme.example"),
        # A user sending as a colleague: alice as richard.
        Abuse(ALICE_LOGIN, "richard@acme.example", "alice@acme.example", "mail", 550, "richard@"),
        Abuse(ALICE_LOGIN, "alice@acme.example", "richard@acme.example", "data", 550, "richard@"),
        Abuse(ALICE_LOGIN, "alice@acme.example", "richard.smith@gmail.com", "data", 550, "gmail"),
        # The null sender, and a From with two mailboxes (one of them the login's own).
        Abuse(RICHARD_LOGIN, "", "richard@acme.example", "mail", 550, "null sender"),
        Abuse(
            RICHARD_LOGIN,
            "richard@acme.example",
            "richard@acme.example, alice@acme.example",
            "data",
            550,
            "2 mailboxes",
        ),
    ],
)
async def test_sending_as_someone_else_is_refused(world: World, case: Abuse) -> None:
    """Cross-tenant and colleague impersonation get 550 5.7.1 naming the address; no trace."""
    result = await send(world, case.login, case.mail_from, email_from(case.sender))
    assert result.auth[0] == 235
    code, text = result.mail if case.step == "mail" else (result.data or (0, ""))
    assert (code, text[:5]) == (case.reply, "5.7.1"), result
    assert case.names in text
    assert counts(world.sessions) == (0, 0)
    assert not world.mx.transactions


async def test_second_from_header_is_refused(world: World) -> None:
    """Two From headers, even both the login's own, are refused."""
    raw = b"From: richard@acme.example\r\n" + email_from("richard@acme.example")
    result = await send(world, RICHARD_LOGIN, "richard@acme.example", raw)
    assert result.data is not None and result.data[0] == 550
    assert "2 From headers" in result.data[1]
    assert counts(world.sessions) == (0, 0)


async def test_bare_newline_is_refused_and_never_sent(world: World) -> None:
    """A bare LF in the submitted bytes: 550 5.5.2, nothing queued or stored."""
    raw = email_from("richard@acme.example").replace(b"please send", b"please\nsend")
    result = await send(world, RICHARD_LOGIN, "richard@acme.example", raw)
    assert result.data is not None
    assert result.data[0] == 550 and result.data[1].startswith("5.5.2")
    assert counts(world.sessions) == (0, 0)


async def test_login_brute_force_is_locked_out(world: World) -> None:
    """Every wrong password is answered 535; the third locks the user and the address.

    After the lock even the right password gets 454 4.7.0, from the same address for any
    user and from another address for the same user.
    """
    for _ in range(3):
        wrong = await send(
            world, RICHARD_LOGIN, "richard@acme.example", b"", password="guess", rcpt_to=[]
        )
        assert wrong.auth[0] == 535 and wrong.auth[1].startswith("5.7.8")
    right = await send(
        world, RICHARD_LOGIN, "richard@acme.example", email_from("richard@acme.example")
    )
    assert right.auth[0] == 454 and right.auth[1].startswith("4.7.0")
    assert right.mail[0] == 530
    other_user = await send(world, ALICE_LOGIN, "alice@acme.example", b"", rcpt_to=[])
    assert other_user.auth[0] == 454  # the client address is locked
    elsewhere = await send(
        world, RICHARD_LOGIN, "richard@acme.example", b"", rcpt_to=[], source_address="127.0.0.2"
    )
    assert elsewhere.auth[0] == 454  # the user is locked
    fresh = await send(
        world,
        BOB_LOGIN,
        "bob@globex.example",
        email_from("bob@globex.example"),
        source_address="127.0.0.3",
    )
    assert fresh.auth[0] == 235 and fresh.accepted  # nobody else is affected
    assert counts(world.sessions)[1] == 1


async def test_unknown_user_and_foreign_authzid_are_refused(world: World) -> None:
    """No such login, or PLAIN asking to act as another user: 535, never a hang."""
    nobody = await send(
        world, "eve@acme.capture.example", "eve@acme.example", b"", rcpt_to=[], password="x"
    )
    assert nobody.auth[0] == 535
    proxy = await send(
        world, ALICE_LOGIN, "richard@acme.example", b"", rcpt_to=[], authzid=RICHARD_LOGIN
    )
    assert proxy.auth[0] == 535
    assert proxy.mail[0] == 530
    assert counts(world.sessions) == (0, 0)


@pytest.mark.usefixtures("demo")
async def test_unverified_key_follows_the_send_policy(
    settings: Settings, sessions: sessionmaker[Session], remote: Remote, tmp_path: Path
) -> None:
    """A key whose record is not published never signs; policy "send" sends it unsigned."""
    recorder = remote.mx
    configured = relay_settings(
        settings, remote.dns, remote.smtp_port, tmp_path, unsigned_policy="send"
    )
    seed_world(sessions, configured, DNSServer())  # the record goes to a server nobody asks
    async with running(configured) as addresses:
        result = await submit_async(
            addresses[1][1],
            user=RICHARD_LOGIN,
            password=PASSWORDS[RICHARD_LOGIN],
            mail_from="richard@acme.example",
            rcpt_to=["carol@client.example"],
            data=email_from("richard@acme.example"),
        )
        assert result.accepted
        delivered = await recorder.wait_for_async(lambda ts: any(t.accepted for t in ts))
    assert b"DKIM-Signature" not in delivered[0].data
    with sessions() as session:
        row = session.scalars(select(OutboundMessage)).one()
        assert row.signing.startswith("unsigned: DKIM key s1._domainkey.acme.example not verified")
        assert session.scalars(select(DkimKey.verified_at)).one() is None
        assert session.scalars(select(ReceivedMessage.state)).one() in (
            MessageState.RECEIVED,
            MessageState.PROCESSED,
            MessageState.QUARANTINED,
        )


# --- hand-back and the forwarding check ------------------------------------------------------


def gmail_confirmation(code: str) -> bytes:
    """Gmail's forwarding confirmation to richard's capture address, signed by google.com."""
    raw = make_email(
        sender="Gmail Team <forwarding-noreply@google.com>",
        to=RICHARD_LOGIN,
        subject=f"(#{code}) Gmail Forwarding Confirmation - Receive Mail from richard.smith",
        body=(
            f"richard.smith@gmail.com has requested to automatically forward mail to "
            f"{RICHARD_LOGIN}.\r\nConfirmation code: {code}\r\n"
        ),
        message_id=f"{code}@google.com",
    )
    return dkim_sign(raw, GOOGLE_KEY)


async def test_gmail_confirmation_is_handed_back_unmodified(world: World) -> None:
    """The confirmation reaches richard's primary address byte for byte, DKIM intact, once."""
    raw = gmail_confirmation("612345789")
    sent = await send_raw_async(
        world.capture_port,
        "forwarding-noreply@google.com",
        [RICHARD_LOGIN],
        raw,
        source_address=GMAIL_IP,
    )
    assert sent.accepted
    delivered = await world.mx.wait_for_async(lambda ts: any(t.accepted for t in ts))
    handed = delivered[0]
    assert handed.rcpt_tos == ["richard@acme.example"]
    assert handed.mail_from == f"forwarding-handback@{HOSTNAME}"
    assert handed.data == raw
    assert dkim.verify(handed.data, dnsfunc=Resolver(world.settings.dns).dkim_dnsfunc)

    # Forwarding now works, so the handed-back copy comes back: it is not handed back again.
    again = await send_raw_async(
        world.capture_port,
        "forwarding-noreply@google.com",
        [RICHARD_LOGIN],
        raw,
        source_address=GMAIL_IP,
    )
    assert again.accepted

    def settled() -> list[str] | None:
        with world.sessions() as session:
            states = list(
                session.scalars(
                    select(ForwardingConfirmation.handback_state).order_by(
                        ForwardingConfirmation.id
                    )
                )
            )
        return states if states == ["sent", "duplicate"] else None

    assert await eventually(settled) == ["sent", "duplicate"]
    await asyncio.sleep(0.3)
    assert len(world.mx.transactions) == 1


async def test_forwarding_check_proves_a_working_forward(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The challenge goes out signed, comes back through Gmail forwarding, and is proven."""
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
    check = await handback.send_challenge(
        world.sessions,
        BlobStore(world.settings.storage.blob_dir),
        world.settings,
        Resolver(world.settings.dns),
        staff_id=richard.id,
    )
    delivered = await world.mx.wait_for_async(lambda ts: any(t.accepted for t in ts))
    challenge = delivered[0]
    assert challenge.rcpt_tos == ["richard@acme.example"]
    assert b"d=acme.example" in challenge.data.split(b"\r\n\r\n", 1)[0]
    assert dkim.verify(challenge.data, dnsfunc=Resolver(world.settings.dns).dkim_dnsfunc)

    # richard@acme.example forwards (via his Gmail) to his capture address.
    envelope, forwarded = gmail_forward(
        challenge.data, "richard.smith@gmail.com", RICHARD_LOGIN, GOOGLE_KEY
    )
    back = await send_raw_async(
        world.capture_port, envelope, [RICHARD_LOGIN], forwarded, source_address=GMAIL_IP
    )
    assert back.accepted

    def proven() -> ForwardingCheck | None:
        with world.sessions() as session:
            row = session.get(ForwardingCheck, check.id)
            return row if row is not None and row.proven_at is not None else None

    row = await eventually(proven)
    assert row.observed["envelope_pattern"] == (
        "gmail +caf_ tag (own address, names the capture address)"
    )
    assert row.observed["arc_sealers"] == ["google.com"]
    assert "acme.example (pass)" in row.observed["dkim_signers"]
    with world.sessions() as session:
        assert session.scalars(select(Activity)).all() == []  # a check is not correspondence

    capsys.readouterr()
    args = argparse.Namespace(tenant="acme", username="richard", json=False)
    assert staff_commands.cmd_staff_show(args, world.settings) == 0
    shown = capsys.readouterr().out
    assert "forwarding" in shown and "proven" in shown
    assert "gmail +caf_ tag" in shown and "google.com" in shown


async def test_expired_challenge_proves_nothing(world: World) -> None:
    """A challenge that comes back after it expired is quarantined, the check stays open."""
    with world.sessions() as session:
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
    check = await handback.send_challenge(
        world.sessions,
        BlobStore(world.settings.storage.blob_dir),
        world.settings,
        Resolver(world.settings.dns),
        staff_id=richard.id,
    )
    delivered = await world.mx.wait_for_async(lambda ts: any(t.accepted for t in ts))
    with world.sessions.begin() as session:
        row = session.get_one(ForwardingCheck, check.id)
        row.expires_at = row.sent_at - timedelta(seconds=1)
    envelope, forwarded = gmail_forward(
        delivered[0].data, "richard.smith@gmail.com", RICHARD_LOGIN, GOOGLE_KEY
    )
    back = await send_raw_async(
        world.capture_port, envelope, [RICHARD_LOGIN], forwarded, source_address=GMAIL_IP
    )
    assert back.accepted

    def quarantined() -> str | None:
        with world.sessions() as session:
            message = session.scalars(
                select(ReceivedMessage).where(ReceivedMessage.state == MessageState.QUARANTINED)
            ).first()
            return message.reason if message is not None else None

    assert "challenge had expired" in await eventually(quarantined)
    with world.sessions() as session:
        assert session.get_one(ForwardingCheck, check.id).proven_at is None


def test_staff_password_is_shown_once_and_stored_hashed(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`staff password` prints the login and a fresh password; only a scrypt hash is kept."""
    args = argparse.Namespace(tenant="acme", username="richard")
    assert staff_commands.cmd_staff_password(args, settings) == 0
    shown = capsys.readouterr().out
    password = shown.split("password:", 1)[1].split()[0]
    assert "username:     richard@acme.capture.example" in shown
    with sessions() as session:
        stored = session.scalars(select(Staff.password_hash)).one()
    assert stored is not None and password not in stored
    assert verify_password(password, stored)
