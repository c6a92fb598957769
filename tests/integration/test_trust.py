"""Sender authentication end to end: real SMTP, a real DNS server, real signatures and seals.

Gmail's servers are 127.0.0.10, the tenant's Microsoft 365 is 127.0.0.20, the client's own
server 127.0.0.30, and an attacker 127.0.0.66: the client binds to those source addresses, so
SPF sees different senders. Every genuine forward must become an activity with the right
verdicts; every forgery must be quarantined with a reason naming the failed check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    ForwardingConfirmation,
    MessageState,
    ReceivedMessage,
)
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import (
    SigningKey,
    arc_seal,
    dkim_sign,
    gmail_forward,
    m365_forward,
    make_key,
)
from mailledger.testing.mail import make_email
from mailledger.testing.smtp import running_server, send_raw_async

# The trust rules hold on both stores.
pytestmark = pytest.mark.postgres

GMAIL_IP = "127.0.0.10"
M365_IP = "127.0.0.20"
CLIENT_IP = "127.0.0.30"
ATTACKER_IP = "127.0.0.66"
GATEWAY_IP = "127.0.0.77"
RICHARD = "richard@acme.capture.example"
BOB = "bob@acme.capture.example"
LOG = "log@acme.capture.example"


@dataclass(frozen=True)
class Keys:
    """The signing keys of everyone in the test world."""

    client_rsa: SigningKey
    client_ed: SigningKey
    google: SigningKey
    microsoft: SigningKey
    acme: SigningKey
    attacker: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """One key set for the module (RSA generation is slow)."""
    return Keys(
        client_rsa=make_key("client.example", "s1"),
        client_ed=make_key("client.example", "ed", "ed25519"),
        google=make_key("google.com", "arc-20160816"),
        microsoft=make_key("microsoft.com", "arcselector9901"),
        acme=make_key("acme.example", "sel1"),
        attacker=make_key("attacker.example", "x"),
    )


@pytest.fixture
def dns_server(keys: Keys) -> Iterator[DNSServer]:
    """The world's DNS: SPF for each sender, DKIM and ARC keys, DMARC policies."""
    with DNSServer() as server:
        server.add("gmail.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("acme.example", "TXT", f"v=spf1 ip4:{M365_IP} -all")
        server.add("client.example", "TXT", f"v=spf1 ip4:{CLIENT_IP} -all")
        server.add("attacker.example", "TXT", f"v=spf1 ip4:{ATTACKER_IP} -all")
        server.add("_dmarc.client.example", "TXT", "v=DMARC1; p=reject")
        server.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine")
        server.add("_dmarc.gmail.com", "TXT", "v=DMARC1; p=none")
        for key in (
            keys.client_rsa,
            keys.client_ed,
            keys.google,
            keys.microsoft,
            keys.acme,
            keys.attacker,
        ):
            server.add(key.record_name, "TXT", key.txt)
        yield server


@pytest.fixture
def settings(settings: Settings, dns_server: DNSServer) -> Settings:
    """Test settings resolving through the world's DNS."""
    return settings.model_copy(update={"dns": dns_server.settings(timeout_seconds=1.0)})


@pytest.fixture
def world(demo: DemoAddresses, sessions: sessionmaker[Session]) -> DemoAddresses:
    """The demo tenant plus Bob, a colleague with his own Gmail address."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        directory.add_staff(session, tenant, "bob", ["bob@acme.example", "bob.jones@gmail.com"])
    return demo


async def _final(sessions: sessionmaker[Session], queue_text: str) -> ReceivedMessage:
    queue_id = queue_text.rsplit(" ", 1)[-1]
    for _ in range(200):
        with sessions() as session:
            message = session.scalars(
                select(ReceivedMessage).where(ReceivedMessage.queue_id == queue_id)
            ).one()
            _ = message.trace, message.routes
            if message.state is not MessageState.RECEIVED or any(
                t.decision == "deferred" for t in message.trace
            ):
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"message {queue_id} never finished")


async def deliver(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    source: str,
    mail_from: str,
    rcpt: list[str],
    data: bytes,
    helo: str = "mail.example",
) -> ReceivedMessage:
    """Send over SMTP from ``source`` and wait until processing decided."""
    async with running_server(settings) as port:
        result = await send_raw_async(port, mail_from, rcpt, data, source_address=source, helo=helo)
        assert result.accepted, result
        assert result.data is not None
        return await _final(sessions, result.data[1])


def _activity(sessions: sessionmaker[Session]) -> Activity:
    with sessions() as session:
        [activity] = session.scalars(select(Activity)).all()
        return activity


def _signed_original(keys: Keys, **kwargs: Any) -> bytes:
    return dkim_sign(dkim_sign(make_email(**kwargs), keys.client_rsa), keys.client_ed)


async def test_gmail_forward_is_recorded_with_the_clients_verdict(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Richard's Gmail forward: SPF passes for his own Gmail address; Carol's DKIM survives."""
    envelope, data = gmail_forward(
        _signed_original(keys), "richard.smith@gmail.com", RICHARD, keys.google
    )
    message = await deliver(
        settings, sessions, source=GMAIL_IP, mail_from=envelope, rcpt=[RICHARD], data=data
    )
    assert message.state is MessageState.PROCESSED, message.reason
    auth = _activity(sessions).auth
    assert auth["trust"] == "forwarder-authenticated"
    assert "richardsmith@gmail.com is the staff member's own address" in auth["trust_reason"]
    assert auth["spf"] == "pass"
    assert auth["dkim"] == "pass"
    assert {s["result"] for s in auth["dkim_signatures"]} == {"pass"}
    assert auth["arc"] == "pass"
    assert auth["arc_sealers"] == ["google.com"]
    assert auth["dmarc"] == "pass"
    assert auth["original"] == {
        "result": "pass",
        "via": "dkim",
        "detail": "dkim pass d=client.example",
    }


async def test_stored_copy_carries_our_verdict_and_drops_forged_ones(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    world: DemoAddresses,
    keys: Keys,
) -> None:
    """An Authentication-Results claiming our authserv-id is removed; ours is stamped on top."""
    forged = b"Authentication-Results: mx.capture.example; dmarc=pass header.from=x\r\n"
    envelope, data = gmail_forward(
        _signed_original(keys), "richard.smith@gmail.com", RICHARD, keys.google
    )
    await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from=envelope,
        rcpt=[RICHARD],
        data=forged + data,
    )
    stored = blobs.get(_activity(sessions).raw_blob)
    assert stored.startswith(b"Authentication-Results: mx.capture.example; spf=pass")
    assert stored.count(b"Authentication-Results: mx.capture.example") == 1
    assert b"header.from=x" not in stored


async def test_m365_forward_passes_spf_for_the_tenant_domain(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Exchange Online forwards with an SRS envelope in acme.example, which the tenant owns."""
    envelope, data = m365_forward(
        _signed_original(keys), "richard@acme.example", RICHARD, keys.microsoft
    )
    message = await deliver(
        settings, sessions, source=M365_IP, mail_from=envelope, rcpt=[RICHARD], data=data
    )
    assert message.state is MessageState.PROCESSED, message.reason
    assert _activity(sessions).auth["trust_reason"] == "spf=pass for tenant domain acme.example"


async def test_tenant_domain_forward_proven_by_dkim_alone(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """A forward DKIM-signed by the tenant's domain counts even when SPF fails."""
    data = dkim_sign(
        b"X-Forwarded-To: richard@acme.capture.example\r\n" + _signed_original(keys), keys.acme
    )
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="richard@acme.example",
        rcpt=[RICHARD],
        data=data,
    )
    assert message.state is MessageState.PROCESSED, message.reason
    auth = _activity(sessions).auth
    assert auth["spf"] == "fail"
    assert auth["trust_reason"] == "dkim=pass d=acme.example (tenant domain)"


async def test_bcc_to_log_from_tenant_domain_is_outbound(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Richard's BCC to log@ from his company mailbox: aligned SPF and DKIM for acme.example."""
    data = dkim_sign(
        make_email(sender="Richard Smith <richard@acme.example>", to="carol@client.example"),
        keys.acme,
    )
    message = await deliver(
        settings,
        sessions,
        source=M365_IP,
        mail_from="richard@acme.example",
        rcpt=[LOG],
        data=data,
    )
    assert message.state is MessageState.PROCESSED, message.reason
    activity = _activity(sessions)
    assert activity.direction.value == "outbound"
    assert activity.auth["trust"] == "sender-authenticated"
    assert activity.auth["dmarc"] == "pass"


async def test_bcc_to_log_from_gmail_needs_the_address_itself(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses
) -> None:
    """From Gmail, log@ accepts Richard's mail only with his own address as envelope sender."""
    data = make_email(sender="richard.smith@gmail.com", to="carol@client.example")
    good = await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from="richard.smith@gmail.com",
        rcpt=[LOG],
        data=data,
    )
    assert good.state is MessageState.PROCESSED, good.reason
    other = make_email(sender="richard.smith@gmail.com", to="carol@client.example")
    bad = await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from="mallory@gmail.com",
        rcpt=[LOG],
        data=other,
    )
    assert bad.state is MessageState.QUARANTINED
    assert "shared domain gmail.com" in bad.reason


async def test_another_gmail_users_forward_is_quarantined(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Mallory's Gmail passes SPF for gmail.com too: the address, not the domain, decides."""
    envelope, data = gmail_forward(
        _signed_original(keys), "mallory@gmail.com", RICHARD, keys.google
    )
    message = await deliver(
        settings, sessions, source=GMAIL_IP, mail_from=envelope, rcpt=[RICHARD], data=data
    )
    assert message.state is MessageState.QUARANTINED, [(t.step, t.detail) for t in message.trace]
    assert message.reason.startswith("untrusted: forwarder not authenticated (spf=pass")
    assert "mallory@gmail.com is not one of the staff member's addresses" in message.reason
    assert "arc=pass by google.com but the forwarding headers name another mailbox" in (
        message.reason
    )


async def test_spoofed_client_mail_without_signature_is_quarantined(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses
) -> None:
    """An attacker writing as Carol straight to the capture address gets nothing recorded."""
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="carol@client.example",
        rcpt=[RICHARD],
        data=make_email(),
    )
    assert message.state is MessageState.QUARANTINED
    assert "spf=fail for client.example" in message.reason
    with sessions() as session:
        assert session.scalars(select(Activity)).all() == []


async def test_replayed_forward_to_another_capture_address_is_quarantined(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Richard's genuine, Google-sealed forward replayed to Bob's capture address is refused."""
    _, data = gmail_forward(_signed_original(keys), "richard.smith@gmail.com", RICHARD, keys.google)
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="x@attacker.example",
        rcpt=[BOB],
        data=data,
    )
    assert message.state is MessageState.QUARANTINED
    assert "dkim=pass d=client.example (not a tenant domain)" in message.reason
    assert "forwarding headers name another mailbox" in message.reason


async def test_gmail_tag_naming_another_capture_address_is_refused(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Gmail's caf envelope says where it forwards to; a copy arriving elsewhere is not trusted."""
    envelope, data = gmail_forward(
        _signed_original(keys), "richard.smith@gmail.com", RICHARD, keys.google
    )
    message = await deliver(
        settings, sessions, source=GMAIL_IP, mail_from=envelope, rcpt=[BOB], data=data
    )
    assert message.state is MessageState.QUARANTINED
    assert f"forward tag names {RICHARD}, not {BOB}" in message.reason


async def test_arc_chain_sealed_by_untrusted_domain_is_quarantined(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """A valid ARC chain proves nothing when its sealer is not on the trusted list."""
    forwarded = (
        f"X-Forwarded-To: {RICHARD}\r\nX-Forwarded-For: richard.smith@gmail.com {RICHARD}\r\n"
    ).encode() + _signed_original(keys)
    data = arc_seal(forwarded, keys.attacker, "mx.attacker.example", "spf=pass")
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="richard.smith+caf_=richard=acme.capture.example@gmail.com",
        rcpt=[RICHARD],
        data=data,
    )
    assert message.state is MessageState.QUARANTINED
    assert "arc=pass but sealer attacker.example is not trusted" in message.reason
    assert "spf=fail for gmail.com" in message.reason


async def test_signature_with_body_length_and_appended_text_is_not_trusted(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """An l= signature by the tenant's domain, with text appended after it, proves nothing."""
    signed = dkim_sign(make_email(), keys.acme, body_length=True)
    data = signed + b"PS: wire the money to account 666.\r\n"
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="richard@acme.example",
        rcpt=[RICHARD],
        data=data,
    )
    assert message.state is MessageState.QUARANTINED
    assert "dkim=pass d=acme.example but l= leaves part of the body unsigned" in message.reason
    with sessions() as session:
        assert session.scalars(select(Activity)).all() == []


async def test_forged_from_forms_are_ambiguous(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses, keys: Keys
) -> None:
    """Two From headers, or two mailboxes in one From, are quarantined before any trust."""
    two_headers = b"From: richard@acme.example\r\n" + _signed_original(keys)
    first = await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from="richard.smith+caf_=richard=acme.capture.example@gmail.com",
        rcpt=[RICHARD],
        data=two_headers,
    )
    assert first.reason == "ambiguous-from: 2 From headers"
    two_boxes = make_email(sender="carol@client.example, richard@acme.example")
    second = await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from="richard.smith+caf_=richard=acme.capture.example@gmail.com",
        rcpt=[RICHARD],
        data=two_boxes,
    )
    assert second.reason == "ambiguous-from: From holds 2 mailboxes"


def _confirmation(code: str) -> bytes:
    return make_email(
        sender="Gmail Team <forwarding-noreply@google.com>",
        to=RICHARD,
        subject=f"(#{code}) Gmail-Weiterleitungsbestätigung - E-Mails von richard.smith@gmail.com",
        body=(
            f"richard.smith@gmail.com möchte E-Mails automatisch an {RICHARD} weiterleiten.\r\n"
            f"Bestätigungscode: {code}\r\n"
            "https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abc123\r\n"
        ),
        message_id=f"{code}@google.com",
    )


async def test_gmail_forwarding_confirmation_is_kept_for_the_staff_member(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: DemoAddresses,
    dns_server: DNSServer,
) -> None:
    """A localized confirmation signed by google.com yields the code and link, no activity."""
    google = make_key("google.com", "20230601")
    dns_server.add(google.record_name, "TXT", google.txt)
    data = dkim_sign(_confirmation("612345789"), google)
    message = await deliver(
        settings,
        sessions,
        source=GMAIL_IP,
        mail_from="forwarding-noreply@google.com",
        rcpt=[RICHARD],
        data=data,
    )
    assert message.state is MessageState.PROCESSED, message.reason
    with sessions() as session:
        [found] = session.scalars(select(ForwardingConfirmation)).all()
        assert found.code == "612345789"
        assert found.link == "https://mail-settings.google.com/mail/vf-%5BANGjdJ8%5D-abc123"
        assert found.requested_by == "richard.smith@gmail.com"
        # The running server hands it back through the relay at once (or soon after).
        assert found.handback_state in ("pending", "sent")
        assert session.scalars(select(Activity)).all() == []


async def test_forged_forwarding_confirmation_is_quarantined(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses
) -> None:
    """Anyone can write From: forwarding-noreply@google.com; only Google's signature counts."""
    message = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from="forwarding-noreply@google.com",
        rcpt=[RICHARD],
        data=_confirmation("111111111"),
    )
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("forged-confirmation")


async def test_trusted_gateway_results_are_believed_only_from_its_network(
    settings: Settings, sessions: sessionmaker[Session], world: DemoAddresses
) -> None:
    """A tenant's filtering MTA vouches for a forward; the same header from elsewhere does not."""
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        tenant.gateway_networks = [f"{GATEWAY_IP}/32"]
        tenant.gateway_authserv_id = "gw.acme.example"
    header = (
        b"Authentication-Results: gw.acme.example; spf=pass "
        b"smtp.mailfrom=richard.smith+caf_=richard=acme.capture.example@gmail.com; "
        b"dkim=pass header.d=client.example; dmarc=pass header.from=client.example\r\n"
    )
    envelope = "richard.smith+caf_=richard=acme.capture.example@gmail.com"
    via_gateway = await deliver(
        settings,
        sessions,
        source=GATEWAY_IP,
        mail_from=envelope,
        rcpt=[RICHARD],
        data=header + make_email(subject="via gateway"),
    )
    assert via_gateway.state is MessageState.PROCESSED, via_gateway.reason
    assert via_gateway.auth["gateway"] == "gw.acme.example"
    direct = await deliver(
        settings,
        sessions,
        source=ATTACKER_IP,
        mail_from=envelope,
        rcpt=[RICHARD],
        data=header + make_email(subject="not via gateway"),
    )
    assert direct.state is MessageState.QUARANTINED
    assert "spf=fail for gmail.com" in direct.reason


async def test_dns_timeout_defers_instead_of_quarantining(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: DemoAddresses,
    keys: Keys,
    dns_server: DNSServer,
) -> None:
    """A name server that does not answer is a temperror: the message waits and is retried."""
    dns_server.timeout("gmail.com")
    envelope, data = gmail_forward(make_email(), "richard.smith@gmail.com", RICHARD, keys.google)
    dns_server.timeout("arc-20160816._domainkey.google.com")
    message = await deliver(
        settings, sessions, source=GMAIL_IP, mail_from=envelope, rcpt=[RICHARD], data=data
    )
    assert message.state is MessageState.RECEIVED
    deferred = [t for t in message.trace if t.decision == "deferred"]
    assert deferred and "temperror" in deferred[0].detail


async def test_slow_dns_does_not_stall_intake(
    settings: Settings,
    sessions: sessionmaker[Session],
    world: DemoAddresses,
    keys: Keys,
    dns_server: DNSServer,
) -> None:
    """Checks waiting on a silent name server hold no database lock: intake keeps answering."""
    dns_server.timeout("gmail.com")
    envelope, data = gmail_forward(make_email(), "richard.smith@gmail.com", RICHARD, keys.google)
    async with running_server(settings) as port:
        first = await send_raw_async(
            port, envelope, [RICHARD], data, source_address=GMAIL_IP, helo="mail.example"
        )
        assert first.accepted
        await asyncio.sleep(0.2)  # the worker is now waiting on DNS for the first message
        started = asyncio.get_running_loop().time()
        second = await send_raw_async(
            port, envelope, [RICHARD], make_email(subject="second"), source_address=GMAIL_IP
        )
        elapsed = asyncio.get_running_loop().time() - started
    assert second.accepted, second
    # The DNS timeout is a second; a lock held through it would make this wait for it.
    assert elapsed < 0.8, f"intake waited {elapsed:.2f} s behind the sender checks"
