"""Headers RFC 5322 §3.6 allows once: a message carrying one of them twice is quarantined.

A DKIM signature covers the *last* instance of each header it lists (RFC 6376 §5.4.2), while
readers tend to show the first; so a replayed, genuinely signed message can gain a prepended
``To:`` (or ``Subject:``, ``Message-ID:``…) and still verify. No instance of a repeated
header is believed: the whole message is kept aside as ambiguous, before any party, thread,
dedupe key, subject, date or DMARC alignment is taken from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import dkim
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.processor import process_message
from mailledger.cli.demo import DemoAddresses
from mailledger.config import DNSSettings, Settings, VerifySettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import quarantine
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    ContactAddress,
    MessageState,
    Participant,
    ReceivedMessage,
)
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import SigningKey, dkim_sign, gmail_forward, make_key
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.smtp import running_server, send_raw_async
from mailledger.verify.authenticate import Authenticator

# Quarantine decisions hold on both stores (DESIGN §9).
pytestmark = pytest.mark.postgres

RICHARD = "richard@acme.capture.example"
LOG = "log@acme.capture.example"
ATTACKER = "mallory@attacker.example"
GMAIL_IP = "127.0.0.10"
CLIENT_IP = "127.0.0.30"
ATTACKER_IP = "127.0.0.66"

# Each single-instance header of RFC 5322 §3.6, with the value an attacker's copy carries.
COPIES = {
    "From": f"Mallory <{ATTACKER}>",
    "Sender": ATTACKER,
    "Reply-To": ATTACKER,
    "To": ATTACKER,
    "Cc": ATTACKER,
    "Bcc": ATTACKER,
    "Subject": "Change of bank details: wire the money today",
    "Date": "Mon, 01 Jan 2024 09:00:00 +0000",
    "Message-ID": "<replayed@attacker.example>",
    "In-Reply-To": "<thread@attacker.example>",
    "References": "<thread@attacker.example>",
}

Process = Callable[[bytes], ReceivedMessage]


def _original() -> bytes:
    """Carol's email carrying every single-instance header exactly once."""
    return make_email(
        cc="Dave Client <dave@client.example>",
        headers={
            "Sender": "carol@client.example",
            "Reply-To": "carol@client.example",
            "Bcc": "richard@acme.example",
            "In-Reply-To": "<earlier@client.example>",
            "References": "<earlier@client.example>",
        },
    )


def _with_copy(raw: bytes, name: str, value: str, position: str) -> bytes:
    """``raw`` with one more ``name`` header, first in the header section or last."""
    line = f"{name}: {value}\r\n".encode()
    if position == "prepended":
        return line + raw
    head, blank, body = raw.partition(b"\r\n\r\n")
    return head + b"\r\n" + line[:-2] + blank + body


def _reason(name: str) -> str:
    """The quarantine reason for two instances of ``name``."""
    if name == "From":  # the wording the From rule had before the other headers joined it
        return "ambiguous-from: 2 From headers"
    return f"ambiguous: 2 {name} headers"


def _recorded(sessions: sessionmaker[Session]) -> list[Activity]:
    with sessions() as session:
        return list(session.scalars(select(Activity)))


def _attacker_known(sessions: sessionmaker[Session]) -> bool:
    """Whether the attacker's address reached the record as a party or a contact."""
    with sessions() as session:
        party = session.scalars(select(Participant).where(Participant.address == ATTACKER))
        contact = session.scalars(select(ContactAddress).where(ContactAddress.address == ATTACKER))
        return party.first() is not None or contact.first() is not None


# --- through processing, with loopback trusted so only the header rule decides ---------------


@pytest.fixture
def reprocess(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings
) -> Callable[[int], ReceivedMessage]:
    """Process a stored message as the worker would, with loopback trusted; return it."""
    trusting = settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})
    unreachable = DNSSettings(nameservers=["127.0.0.1:9"], timeout_seconds=0.2)
    authenticator = Authenticator(Resolver(unreachable), trusting)

    def run(message_id: int) -> ReceivedMessage:
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, trusting, authenticator)
        with sessions() as session:
            message = session.get_one(ReceivedMessage, message_id)
            _ = message.routes, message.trace
            return message

    return run


@pytest.fixture
def process(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    reprocess: Callable[[int], ReceivedMessage],
) -> Process:
    """Store bytes for Richard's capture address as intake would, then process them."""
    return lambda raw: reprocess(store_received(sessions, blobs, raw, [RICHARD]))


def test_the_original_with_each_header_once_is_recorded(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """The control: every single-instance header present once is ordinary mail."""
    message = process(_original())
    assert message.state is MessageState.PROCESSED, message.reason
    assert len(_recorded(sessions)) == 1


@pytest.mark.parametrize("position", ["prepended", "appended"])
@pytest.mark.parametrize("name", list(COPIES))
def test_a_second_instance_quarantines_the_message(
    process: Process, sessions: sessionmaker[Session], name: str, position: str
) -> None:
    """A prepended or appended copy of a once-only header leaves nothing recorded from it."""
    message = process(_with_copy(_original(), name, COPIES[name], position))
    assert message.state is MessageState.QUARANTINED
    assert message.reason == _reason(name)
    assert [route.outcome for route in message.routes] == [_reason(name)]
    assert ("quarantine", "quarantined", _reason(name)) in [
        (t.step, t.decision, t.detail) for t in message.trace
    ]
    assert _recorded(sessions) == []
    assert not _attacker_known(sessions)


def test_a_forced_release_does_not_record_an_ambiguous_message(
    process: Process,
    sessions: sessionmaker[Session],
    reprocess: Callable[[int], ReceivedMessage],
) -> None:
    """No instance can be chosen, so even an operator's --force leaves the message aside."""
    message = process(_with_copy(_original(), "To", ATTACKER, "prepended"))
    with sessions.begin() as session:
        quarantine.release(session, message.id, force=True)
    again = reprocess(message.id)
    assert again.state is MessageState.QUARANTINED
    assert again.reason == _reason("To")
    assert _recorded(sessions) == []


def test_several_repeated_headers_are_all_named(process: Process) -> None:
    """The reason names every repeated header, in the order RFC 5322 §3.6 lists them."""
    raw = _with_copy(_original(), "Subject", COPIES["Subject"], "prepended")
    raw = _with_copy(_with_copy(raw, "Cc", ATTACKER, "prepended"), "cc", ATTACKER, "appended")
    message = process(raw)
    assert message.reason == "ambiguous: 3 Cc headers, 2 Subject headers"


def test_a_clean_copy_of_the_same_email_is_still_recorded(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """The quarantined replay takes no dedupe key: the genuine email still becomes an activity."""
    original = _original()
    replay = process(_with_copy(original, "Message-ID", COPIES["Message-ID"], "prepended"))
    assert replay.state is MessageState.QUARANTINED
    genuine = process(original)
    assert genuine.state is MessageState.PROCESSED, genuine.reason
    [activity] = _recorded(sessions)
    assert activity.subject == "Quote for the spring order"


# --- the replay attack end to end: real SMTP, real DNS, real signatures ---------------------


@pytest.fixture(scope="module")
def client_key() -> SigningKey:
    """The client's DKIM key (cached per run)."""
    return make_key("client.example", "s1")


@pytest.fixture(scope="module")
def google_key() -> SigningKey:
    """Google's ARC key."""
    return make_key("google.com", "arc-20160816")


@pytest.fixture(scope="module")
def acme_key() -> SigningKey:
    """The tenant's own DKIM key for acme.example."""
    return make_key("acme.example", "sel1")


@pytest.fixture
def dns_server(
    client_key: SigningKey, google_key: SigningKey, acme_key: SigningKey
) -> Iterator[DNSServer]:
    """The world's DNS: SPF, DKIM and ARC keys, and DMARC policies."""
    with DNSServer() as server:
        server.add("gmail.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("client.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
        server.add("acme.example", "TXT", "v=spf1 ip4:127.0.0.20 -all")
        server.add("attacker.example", "TXT", f"v=spf1 ip4:{ATTACKER_IP} -all")
        server.add("_dmarc.client.example", "TXT", "v=DMARC1; p=reject")
        server.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine")
        for key in (client_key, google_key, acme_key):
            server.add(key.record_name, "TXT", key.txt)
        yield server


@pytest.fixture
def world_settings(settings: Settings, dns_server: DNSServer) -> Settings:
    """Test settings resolving through the world's DNS; loopback is not trusted here."""
    return settings.model_copy(update={"dns": dns_server.settings(timeout_seconds=1.0)})


async def _deliver(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    mail_from: str,
    rcpt: str,
    data: bytes,
) -> ReceivedMessage:
    """Send from the attacker's address over SMTP and wait until processing decided."""
    async with running_server(settings) as port:
        result = await send_raw_async(
            port, mail_from, [rcpt], data, source_address=ATTACKER_IP, helo="mail.example"
        )
        assert result.accepted, result
        assert result.data is not None
        queue_id = result.data[1].rsplit(" ", 1)[-1]
        for _ in range(200):
            with sessions() as session:
                message = session.scalars(
                    select(ReceivedMessage).where(ReceivedMessage.queue_id == queue_id)
                ).one()
                _ = message.trace, message.routes
                if message.state is not MessageState.RECEIVED:
                    return message
            await asyncio.sleep(0.05)
    raise AssertionError(f"message {queue_id} never finished")


def _still_verifies(raw: bytes, *keys: SigningKey) -> bool:
    """dkimpy's own verdict on the first DKIM signature, with the keys as the DNS."""
    published = {f"{key.record_name}.".encode(): key.txt.encode() for key in keys}

    def txt(name: bytes, timeout: int = 5) -> bytes | None:  # dkimpy passes the timeout
        return published.get(name)

    return bool(dkim.verify(raw, dnsfunc=txt))


async def test_replayed_gmail_forward_with_a_prepended_to_is_quarantined(
    world_settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    client_key: SigningKey,
    google_key: SigningKey,
) -> None:
    """Carol's signed email, forwarded by Richard's Gmail, replayed with ``To: mallory``.

    The client's signature and Google's seal still verify (they cover the last To), so the
    replay would be trusted; the attacker's address must not become a party of anything.
    """
    original = dkim_sign(make_email(), client_key)
    envelope, forward = gmail_forward(original, "richard.smith@gmail.com", RICHARD, google_key)
    replay = f"To: {ATTACKER}\r\n".encode() + forward
    assert _still_verifies(replay, client_key)
    message = await _deliver(
        world_settings, sessions, mail_from=envelope, rcpt=RICHARD, data=replay
    )
    assert not _attacker_known(sessions)
    assert _recorded(sessions) == []
    assert message.state is MessageState.QUARANTINED
    assert message.reason == "ambiguous: 2 To headers"


async def test_replayed_bcc_to_log_with_a_prepended_to_is_quarantined(
    world_settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    acme_key: SigningKey,
) -> None:
    """Richard's BCC to log@, DKIM-signed by acme.example, replayed with ``To: mallory``."""
    sent = dkim_sign(
        make_email(sender="Richard Smith <richard@acme.example>", to="carol@client.example"),
        acme_key,
    )
    replay = f"To: {ATTACKER}\r\n".encode() + sent
    assert _still_verifies(replay, acme_key)
    message = await _deliver(
        world_settings, sessions, mail_from="richard@acme.example", rcpt=LOG, data=replay
    )
    assert not _attacker_known(sessions)
    assert _recorded(sessions) == []
    assert message.state is MessageState.QUARANTINED
    assert message.reason == "ambiguous: 2 To headers"
