"""Loops are told by loop evidence, floods by volume, and a staff member's own mail is neither.

A busy staff member BCCs log@ hundreds of times an hour; that is work, not a loop. A loop shows
itself: our own Received line coming back, an X-Loop naming us, too many hops, or the same email
arriving at one capture address again and again. The per-sender count stays as a volume brake,
for senders nobody authenticated only (DESIGN §5, issue 16 point 5).

The world is real: a DNS server publishes acme.example's SPF (which lists 127.0.0.1, where the
stored messages come from), its DKIM key and DMARC, and client.example's key; the trust step
decides on verdicts our own checks reach, as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import process_message
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.mail.loops import loop_evidence
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, ActivitySource, MessageState, ReceivedMessage
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import SigningKey, dkim_sign, make_key
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.smtp import running_server, send_raw_async
from mailledger.verify.authenticate import Authenticator

# The guard's counts are queries: they hold on both stores.
pytestmark = pytest.mark.postgres

RICHARD = "richard@acme.capture.example"
LOG = "log@acme.capture.example"
HOSTNAME = "mx.capture.example"  # [service] hostname in the test settings

Process = Callable[..., ReceivedMessage]


@pytest.fixture(scope="module")
def acme_key() -> SigningKey:
    """The tenant's DKIM key, as Microsoft 365 signs acme.example's mail with it."""
    return make_key("acme.example", "sel1")


@pytest.fixture(scope="module")
def client_key() -> SigningKey:
    """The client's DKIM key."""
    return make_key("client.example", "s1")


@pytest.fixture
def dns_server(acme_key: SigningKey, client_key: SigningKey) -> Iterator[DNSServer]:
    """acme.example sends from 127.0.0.1 and signs; client.example signs; both publish DMARC."""
    with DNSServer() as server:
        server.add("acme.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        server.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine")
        server.add("client.example", "TXT", "v=spf1 ip4:192.0.2.30 -all")
        server.add("_dmarc.client.example", "TXT", "v=DMARC1; p=none")
        for key in (acme_key, client_key):
            server.add(key.record_name, "TXT", key.txt)
        yield server


@pytest.fixture
def settings(settings: Settings, dns_server: DNSServer) -> Settings:
    """Test settings resolving through the world's DNS, our hostname as named above."""
    assert settings.service.hostname == HOSTNAME
    return settings.model_copy(update={"dns": dns_server.settings(timeout_seconds=1.0)})


@pytest.fixture
def process(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> Process:
    """Store raw bytes for one capture address as intake would, process them, return the row."""
    authenticator = Authenticator(Resolver(settings.dns), settings)

    def run(
        raw: bytes,
        rcpt: str,
        mail_from: str = "richard@acme.example",
        config: Settings = settings,
    ) -> ReceivedMessage:
        message_id = store_received(sessions, blobs, raw, [rcpt], mail_from=mail_from)
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, config, authenticator)
        with sessions() as session:
            return session.get_one(ReceivedMessage, message_id)

    return run


def _count(sessions: sessionmaker[Session], model: type[Activity] | type[ActivitySource]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _staff_bcc(acme_key: SigningKey, n: int) -> bytes:
    """Richard's mail to client n, signed by acme.example's key as his provider signs it."""
    raw = make_email(
        sender="Richard Smith <richard@acme.example>",
        to=f"Client {n} <client{n}@client.example>",
        subject="Spring offer",
        body="Dear client,\r\nour spring offer is attached.\r\nRichard\r\n",
    )
    return dkim_sign(raw, acme_key)


def _forward_hop(raw: bytes, n: int) -> bytes:
    """One more pass through a forwarding mailbox: its Received line on top (RFC 5321 §4.4)."""
    return (
        f"Received: from relay{n}.forwarder.example by mx{n}.forwarder.example "
        f"with ESMTPS; Mon, 1 Jan 2024 00:00:{n % 60:02d} +0000\r\n"
    ).encode() + raw


def _our_relay_line() -> bytes:
    """The Received line our relay adds to what staff send through it (relay.submission)."""
    return (
        f"Received: from laptop\r\n\tby {HOSTNAME} (mailledger) with ESMTPSA;\r\n"
        "\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
    ).encode()


def _stopped_early(outcomes: list[tuple[MessageState, str]]) -> int:
    """The round a loop was first held at, checked to be among the first few, and every
    round after it held as a loop too."""
    first_held = next(
        (i for i, (state, _) in enumerate(outcomes) if state is not MessageState.PROCESSED),
        len(outcomes),
    )
    assert 1 <= first_held <= 3, outcomes
    assert all(state is MessageState.QUARANTINED for state, _ in outcomes[first_held:]), outcomes
    assert all(reason.startswith("loop: ") for _, reason in outcomes[first_held:]), outcomes
    return first_held


# --- a staff member's own mail ---------------------------------------------------------------


def test_500_bccs_from_one_staff_member_in_a_minute_are_all_recorded(
    process: Process, sessions: sessionmaker[Session], acme_key: SigningKey
) -> None:
    """A mail merge BCC'd to log@: 500 messages, ten times the volume brake, all recorded.

    Each passes the log@ rule as a real BCC does (SPF and DKIM aligned with acme.example):
    the sender is an authenticated staff member, which no count of their mail overrides.
    """
    states = [process(_staff_bcc(acme_key, n), LOG) for n in range(500)]
    refused = [(m.id, m.reason) for m in states if m.state is not MessageState.PROCESSED]
    assert refused == []
    assert {m.auth["trust"] for m in states} == {"sender-authenticated"}
    assert _count(sessions, Activity) == 500


def test_client_mail_that_authenticates_itself_is_not_braked(
    process: Process, settings: Settings, sessions: sessionmaker[Session], client_key: SigningKey
) -> None:
    """A client whose own DKIM survives Richard's forward is not an unauthenticated sender."""
    config = settings.model_copy(
        update={"processing": settings.processing.model_copy(update={"loop_threshold": 5})}
    )
    for n in range(12):
        raw = dkim_sign(make_email(subject=f"Order {n}"), client_key)
        message = process(raw, RICHARD, config=config)
        assert message.state is MessageState.PROCESSED, (n, message.reason)
        assert message.auth["original"]["result"] == "pass"
    assert _count(sessions, Activity) == 12


# --- the volume brake ------------------------------------------------------------------------


def test_unauthenticated_outside_sender_past_the_threshold_is_held_for_volume(
    process: Process, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Past the threshold, an outside sender nobody authenticated is held, and told why."""
    limit = settings.processing.loop_threshold
    messages = [process(make_email(subject=f"Order {n}"), RICHARD) for n in range(limit + 1)]
    assert [m.state for m in messages[:limit]] == [MessageState.PROCESSED] * limit
    last = messages[-1]
    assert last.state is MessageState.QUARANTINED
    assert last.reason.startswith("volume: "), last.reason
    assert "carol@client.example" in last.reason
    assert "not authenticated" in last.reason
    assert _count(sessions, Activity) == limit


# --- loops -----------------------------------------------------------------------------------


def test_a_forwarding_loop_is_stopped_within_its_first_rounds(
    process: Process, sessions: sessionmaker[Session], client_key: SigningKey
) -> None:
    """A forwarding rule pointing back at us: the same email comes round and round.

    Carol's signed mail authenticates (no volume brake would ever stop it); each round adds a
    forwarder's Received line and arrives at Richard's capture address again. The first rounds
    are one email with several sources; by the fourth it is held as a loop, and stays held.
    """
    raw = dkim_sign(make_email(message_id="round@client.example"), client_key)
    outcomes = []
    for n in range(10):
        raw = _forward_hop(raw, n)
        message = process(raw, RICHARD)
        outcomes.append((message.state, message.reason))
    first_held = _stopped_early(outcomes)
    assert "round@client.example" in outcomes[first_held][1]
    assert _count(sessions, Activity) == 1
    assert _count(sessions, ActivitySource) == first_held


def test_a_loop_that_rewrites_the_message_id_is_stopped_by_its_content(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A forwarder that writes a new Message-ID each round: the same content keeps coming."""
    original = make_email(message_id="")
    outcomes = []
    for n in range(10):
        raw = f"Message-ID: <rewritten-{n}@forwarder.example>\r\n".encode() + original
        message = process(_forward_hop(raw, n), RICHARD)
        outcomes.append((message.state, message.reason))
    first_held = _stopped_early(outcomes)
    # However the record step keys those first rounds, they are at most that many activities.
    assert _count(sessions, Activity) <= first_held


def test_a_staff_bcc_coming_back_again_and_again_is_a_loop(
    process: Process, acme_key: SigningKey
) -> None:
    """Authenticated staff mail is never braked for volume, but a loop of it is still a loop."""
    raw = _staff_bcc(acme_key, 1)
    states = []
    for n in range(6):
        raw = _forward_hop(raw, n)
        states.append(process(raw, LOG).state)
    assert states[0] is MessageState.PROCESSED
    assert states[-2:] == [MessageState.QUARANTINED] * 2


def test_our_relayed_copy_back_once_is_a_second_path_and_twice_is_a_loop(
    process: Process, sessions: sessionmaker[Session], acme_key: SigningKey
) -> None:
    """Our relay's Received line below the newest: once, a colleague's mailbox forwarded what
    Richard sent through us (one email, two sources); twice, it went out through us again."""
    sent = _our_relay_line() + _staff_bcc(acme_key, 7)
    once = process(_forward_hop(sent, 1), RICHARD)
    assert once.state is MessageState.PROCESSED, once.reason
    again = _our_relay_line() + _forward_hop(sent, 1)
    twice = process(_forward_hop(again, 2), RICHARD)
    assert twice.state is MessageState.QUARANTINED
    assert twice.reason.startswith("loop: "), twice.reason
    assert HOSTNAME in twice.reason
    assert _count(sessions, Activity) == 1


def test_x_loop_naming_us_is_a_loop_and_naming_the_staff_member_is_not(
    process: Process, sessions: sessionmaker[Session], client_key: SigningKey
) -> None:
    """X-Loop marks where a message has been: our capture address there means it came round.

    A staff member's own filter stamping their own address (procmail's habit) is a forward.
    """
    ours = make_email(subject="ours", headers={"X-Loop": RICHARD})
    held = process(dkim_sign(ours, client_key), RICHARD)
    assert held.state is MessageState.QUARANTINED
    assert held.reason.startswith("loop: X-Loop"), held.reason
    theirs = make_email(subject="theirs", headers={"X-Loop": "richard@acme.example"})
    kept = process(dkim_sign(theirs, client_key), RICHARD)
    assert kept.state is MessageState.PROCESSED, kept.reason
    assert _count(sessions, Activity) == 1


def test_too_many_hops_is_a_loop_however_the_message_came_in(
    process: Process, settings: Settings, client_key: SigningKey
) -> None:
    """The hop count the listeners refuse at DATA holds in processing too (RFC 5321 §6.3)."""
    raw = dkim_sign(make_email(), client_key)
    for n in range(settings.capture.max_received_headers + 1):
        raw = _forward_hop(raw, n)
    message = process(raw, RICHARD)
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("loop: "), message.reason
    assert "Received" in message.reason


# --- the same, through the real listener ----------------------------------------------------


async def _send_and_wait(
    port: int, sessions: sessionmaker[Session], rcpt: str, data: bytes
) -> ReceivedMessage:
    """Send over SMTP as acme.example's own server would, and wait until it is processed."""
    result = await send_raw_async(port, "richard@acme.example", [rcpt], data)
    assert result.accepted, result
    assert result.data is not None
    queue_id = result.data[1].rsplit(" ", 1)[-1]
    for _ in range(400):
        with sessions() as session:
            message = session.scalars(
                select(ReceivedMessage).where(ReceivedMessage.queue_id == queue_id)
            ).one()
            if message.state is not MessageState.RECEIVED:
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"message {queue_id} was never processed")


async def test_over_smtp_staff_bccs_pass_the_brake_and_a_loop_is_stopped(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    acme_key: SigningKey,
    client_key: SigningKey,
) -> None:
    """The real listener and worker: BCCs past the volume threshold are all recorded, and a
    forwarding loop sent round through the listener is held from one of its first rounds."""
    processing = settings.processing.model_copy(update={"loop_threshold": 5})
    config = settings.model_copy(update={"processing": processing})
    async with running_server(config) as port:
        bccs = [
            await _send_and_wait(port, sessions, LOG, _staff_bcc(acme_key, n)) for n in range(8)
        ]
        assert [m.reason for m in bccs if m.state is not MessageState.PROCESSED] == []
        raw = dkim_sign(make_email(message_id="smtp-round@client.example"), client_key)
        outcomes = []
        for n in range(6):
            raw = _forward_hop(raw, n)
            message = await _send_and_wait(port, sessions, RICHARD, raw)
            outcomes.append((message.state, message.reason))
    _stopped_early(outcomes)
    assert _count(sessions, Activity) == 8 + 1


# --- the evidence, on headers alone ----------------------------------------------------------


def _received(*hosts: str) -> dict[str, list[str]]:
    return {"received": [f"from a.example\r\n\tby {h} with ESMTP; date" for h in hosts]}


@pytest.mark.parametrize(
    ("headers", "loop"),
    [
        # Our line as the newest is this very pass (a submission): not a round trip.
        (_received(HOSTNAME), False),
        (_received("mx.google.com", HOSTNAME), False),
        (_received(HOSTNAME, "mx.google.com", HOSTNAME), False),
        (_received("mx.google.com", HOSTNAME, "mx.google.com", HOSTNAME), True),
        (_received("mx.google.com", HOSTNAME.upper(), "x", HOSTNAME), True),
        # Names that merely contain ours are someone else's.
        (_received("a", f"not{HOSTNAME}", "b", f"{HOSTNAME}.evil.example"), False),
        ({"x-loop": ["log@acme.capture.example"]}, True),
        ({"x-loop": [HOSTNAME]}, True),
        ({"x-loop": ["richard@acme.example"]}, False),
        ({"x-loop": ["richard@notacme.capture.example"]}, False),
        ({}, False),
    ],
)
def test_loop_evidence_on_headers(headers: dict[str, list[str]], loop: bool) -> None:
    """Our host in Received lines below the newest more than once, or X-Loop naming us."""
    reason = loop_evidence(
        headers,
        hostname=HOSTNAME,
        capture_domain="acme.capture.example",
        max_hops=50,
        max_own_hops=1,
    )
    assert (reason is not None) is loop, reason
