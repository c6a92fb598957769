"""Mail shaped like real forwarding: DKIM-signed originals, Gmail and Microsoft 365 forwards.

Keys are made per test run and published on the test DNS server, so the signatures and ARC
seals verify through mailledger's own resolver exactly as they would in production.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A DKIM/ARC key for a domain and selector, with the TXT record that publishes it."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private: bytes = b""

    @property
    def record_name(self) -> str:
        """Where the public key is published."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def txt(self) -> str:
        """The DKIM key record (RFC 6376 §3.6.1)."""
        return f"v=DKIM1; k={self.algorithm}; p={_public(self)}"


def _public(key: SigningKey) -> str:
    if key.algorithm == "ed25519":
        raw = base64.b64decode(key.private)
        public = ed25519.Ed25519PrivateKey.from_private_bytes(raw).public_key()
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        loaded = serialization.load_pem_private_key(key.private, password=None)
        data = loaded.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return base64.b64encode(data).decode("ascii")


@functools.cache
def make_key(domain: str, selector: str = "s1", algorithm: str = "rsa") -> SigningKey:
    """A fresh key (cached per run: RSA generation is slow and the tests only need one)."""
    if algorithm == "ed25519":
        raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return SigningKey(domain, selector, algorithm, base64.b64encode(raw))
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return SigningKey(domain, selector, algorithm, pem)


SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id"]


def dkim_sign(
    raw: bytes,
    key: SigningKey,
    *,
    body_length: bool = False,
    canonicalize: tuple[bytes, bytes] = (b"relaxed", b"simple"),
    sha1: bool = False,
) -> bytes:
    """Prepend a DKIM-Signature by ``key``; ``body_length`` adds an l= tag (a weak signature).

    ``canonicalize`` is c= (header, body); ``sha1`` signs RSA with rsa-sha1 (RFC 8301 forbids
    it for new signatures, but verifiers still meet it).
    """
    if key.algorithm == "ed25519":
        algorithm = b"ed25519-sha256"
    else:
        algorithm = b"rsa-sha1" if sha1 else b"rsa-sha256"
    signature = dkim.sign(
        raw,
        key.selector.encode(),
        key.domain.encode(),
        key.private,
        signature_algorithm=algorithm,
        canonicalize=canonicalize,
        include_headers=[*SIGNED_HEADERS, b"from"],
        length=body_length,
    )
    return bytes(signature) + raw


def arc_seal(raw: bytes, key: SigningKey, authserv_id: str, results: str) -> bytes:
    """Seal as a forwarding ADMD would: its Authentication-Results, then the ARC set on top."""
    with_ar = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + raw
    headers = dkim.arc_sign(
        with_ar,
        key.selector.encode(),
        key.domain.encode(),
        key.private,
        authserv_id.encode(),
        include_headers=[
            *SIGNED_HEADERS,
            b"x-forwarded-for",
            b"x-forwarded-to",
        ],
    )
    return b"".join(headers) + with_ar


def gmail_forward(
    original: bytes, gmail_address: str, capture_address: str, google_key: SigningKey
) -> tuple[str, bytes]:
    """Gmail's automatic forward: caf envelope, X-Forwarded-* headers, google.com ARC seal."""
    local, _, domain = gmail_address.partition("@")
    target_user, _, target_domain = capture_address.partition("@")
    envelope = f"{local}+caf_={target_user}={target_domain}@{domain}"
    forwarded = (
        f"X-Forwarded-To: {capture_address}\r\n"
        f"X-Forwarded-For: {gmail_address} {capture_address}\r\n"
    ).encode() + original
    sealed = arc_seal(
        forwarded,
        google_key,
        "mx.google.com",
        "dkim=pass header.i=@client.example; spf=pass smtp.mailfrom=client.example; "
        "dmarc=pass (p=NONE) header.from=client.example",
    )
    return envelope, sealed


def m365_forward(
    original: bytes, staff_address: str, capture_address: str, microsoft_key: SigningKey
) -> tuple[str, bytes]:
    """Exchange Online's forward: an SRS envelope in the tenant's domain and an ARC seal."""
    domain = staff_address.partition("@")[2]
    envelope = f"SRS0=Hx2Q=TT=client.example=carol@{domain}"
    forwarded = (
        f"X-MS-Exchange-Organization-AutoForwarded: true\r\nX-Forwarded-To: {capture_address}\r\n"
    ).encode() + original
    sealed = arc_seal(
        forwarded,
        microsoft_key,
        "mx.microsoft.com",
        "spf=pass smtp.mailfrom=client.example; dkim=pass header.d=client.example; "
        "dmarc=pass action=none header.from=client.example",
    )
    return envelope, sealed
