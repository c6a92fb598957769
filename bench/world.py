"""The benchmark's world: DNS zones, signing keys, a seeded database, and realistic mail.

The same shape as tests/integration/test_trust.py: Carol at client.example signs with RSA-2048
or Ed25519, Gmail (127.0.0.10) forwards to Richard's capture address with its ARC seal,
gmail.com's SPF is a five-lookup include chain like the real one, and client.example publishes
DMARC p=reject.
Every message has its own Message-ID, so nothing is merged as a duplicate.
"""

from __future__ import annotations

import os
import secrets
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import seed_demo
from mailledger.domains import keys as dkim_keys
from mailledger.relay.credentials import hash_password
from mailledger.store import directory
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.models import Base, utcnow
from mailledger.store.secretbox import SecretBox, ensure_key_file
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import SigningKey, dkim_sign, gmail_forward, make_key
from mailledger.testing.mail import make_email

GMAIL_IP = "127.0.0.10"
MX_IP = "127.0.0.40"  # client.example's MX: a recording server
RICHARD_CAPTURE = "richard@acme.capture.example"
RICHARD_GMAIL = "richard.smith@gmail.com"
RICHARD_LOGIN = "richard@acme.capture.example"
RICHARD_PASSWORD = "bench-relay-password"
HELO = "mail-wr1-f41.google.com"
HOSTNAME = "mx.capture.example"
# Headers, DKIM-Signature and the ARC set: roughly what a forward adds around the body.
_OVERHEAD = 3000


@dataclass(frozen=True)
class Keys:
    """Everyone's signing keys."""

    client_rsa: SigningKey
    client_ed: SigningKey
    google: SigningKey


def make_keys() -> Keys:
    """Fresh keys for this run."""
    return Keys(
        make_key("client.example", "s1"),
        make_key("client.example", "ed", "ed25519"),
        make_key("google.com", "arc-20160816"),
    )


def publish(dns: DNSServer, keys: Keys) -> None:
    """SPF (a five-lookup chain for gmail.com), DKIM and ARC keys, DMARC, MX for the relay."""
    dns.add("gmail.com", "TXT", "v=spf1 redirect=_spf.google.com")
    dns.add(
        "_spf.google.com",
        "TXT",
        "v=spf1 include:_netblocks.google.com include:_netblocks2.google.com "
        "include:_netblocks3.google.com ~all",
    )
    dns.add("_netblocks.google.com", "TXT", "v=spf1 ip4:192.0.2.0/24 ~all")
    dns.add("_netblocks2.google.com", "TXT", "v=spf1 ip6:2001:db8::/32 ~all")
    dns.add("_netblocks3.google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} ~all")
    dns.add("google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
    dns.add("client.example", "TXT", "v=spf1 ip4:127.0.0.30 -all")
    dns.add("_dmarc.client.example", "TXT", "v=DMARC1; p=reject")
    dns.add("_dmarc.gmail.com", "TXT", "v=DMARC1; p=none")
    dns.add("_dmarc.acme.example", "TXT", "v=DMARC1; p=quarantine")
    dns.add("acme.example", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
    dns.add("client.example", "MX", "10 mx.client.example.")
    dns.add("mx.client.example", "A", MX_IP)
    for key in (keys.client_rsa, keys.client_ed, keys.google):
        dns.add(key.record_name, "TXT", key.txt)


def seed(database_url: str, secret_key: Path, dns: DNSServer) -> sessionmaker[Session]:
    """Schema, the demo tenant (Richard, Carol, Client Co), a relay password, acme's DKIM key.

    The key is sealed with ``secret_key`` (created here), the server's ``[secrets] key_file``.
    """
    ensure_key_file(secret_key)
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        seed_demo(session)
        tenant = directory.find_tenant(session, "acme")
        staff = directory.find_staff(session, tenant, "richard")
        staff.password_hash = hash_password(RICHARD_PASSWORD)
        box = SecretBox.from_file(secret_key)
        key = dkim_keys.create_key(session, tenant, "acme.example", box, selector="s1")
        # Published on our DNS server just below; what `dkim check` would record.
        key.verified_at = utcnow()
        dns.add(dkim_keys.record_name(key.selector, key.domain), "TXT", key.public_record)
    return sessions


def _text(size: int) -> str:
    words = [
        "quote",
        "order",
        "delivery",
        "office",
        "invoice",
        "meeting",
        "schedule",
        "proposal",
        "thanks",
        "regards",
    ]
    lines, total = [], 0
    while total < size:
        line = " ".join(secrets.choice(words) for _ in range(11))
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def _one(args: tuple[Keys, int, int, bool]) -> tuple[str, bytes]:
    keys, size, index, attach = args
    attachments = []
    body_size = max(size - _OVERHEAD, 200)
    if attach or size > 64 * 1024:
        # Large mail is attachments: base64 grows them by 4/3.
        payload = os.urandom(int(body_size * 0.74))
        attachments = [("quote.pdf", "application/pdf", payload)]
        body_size = 400
    original = make_email(
        subject=f"Quote {index} for the spring order",
        body=_text(body_size),
        attachments=attachments,
    )
    key = keys.client_ed if index % 4 == 3 else keys.client_rsa
    return gmail_forward(dkim_sign(original, key), RICHARD_GMAIL, RICHARD_CAPTURE, keys.google)


def make_messages(keys: Keys, count: int, size: int, pool: ProcessPoolExecutor) -> list[Mail]:
    """``count`` distinct signed forwards of about ``size`` bytes; one in five has a PDF."""
    jobs = [(keys, size, i, size <= 64 * 1024 and i % 5 == 4) for i in range(count)]
    return [Mail(envelope, data) for envelope, data in pool.map(_one, jobs, chunksize=8)]


@dataclass(frozen=True)
class Mail:
    """One message to send: envelope sender and the exact bytes (CRLF)."""

    mail_from: str
    data: bytes
