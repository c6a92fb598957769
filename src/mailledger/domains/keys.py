"""DKIM keys of tenants: generated here, private halves sealed in the database, public halves
checked in DNS.

The relay signs as a customer's domain only with a key whose record the live check saw
published and matching (STYLE: Postal's ``dkim_header.rb``), so this module both makes keys
and answers "is this key published?" (:func:`verify_key_published`). The private key is kept
in its ``dkim_keys`` row, sealed with ``[secrets] key_file`` (``store.dkimkeys``), in the same
transaction as its public record: every node signs with it, and no node needs a key file.
Keys made before that were files; ``domains.keyimport`` moves them in.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.dnsauth.resolver import DNSResult, Resolver
from mailledger.domains.zonetext import zone_line
from mailledger.store.dkimkeys import PrivateKeyNotStoredError, open_private_key, seal_private_key
from mailledger.store.models import CustomerDomain, DkimKey, Tenant, utcnow
from mailledger.store.secretbox import SecretBox, SecretError

Algorithm = Literal["rsa", "ed25519"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("rsa", "ed25519")
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048.
RSA_BITS: Final = 2048
RSA_EXPONENT: Final = 65537
# RFC 6376 §3.1: a selector is a sub-domain (dot-separated labels of letters, digits, hyphens).
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR_RE: Final = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_BASE64_RE: Final = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

CheckStatus = Literal["ok", "missing", "wrong", "error"]


class DkimKeyError(ValueError):
    """A key that cannot be made, found or read; the message says what to do."""


# --- making keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A fresh key pair: the private key's bytes and the public key for ``p=``."""

    algorithm: Algorithm
    private_bytes: bytes = field(repr=False)
    public_b64: str


def generate_key_material(algorithm: Algorithm = "rsa") -> KeyMaterial:
    """A new key pair in the forms dkimpy signs with and DNS publishes.

    RSA: the private key as PKCS#1 PEM (``dkim.sign`` reads it), ``p=`` the DER
    SubjectPublicKeyInfo (RFC 6376 §3.6.1). Ed25519 (RFC 8463 §4): the private key is the
    base64 of the raw 32-byte seed (dkimpy's format), ``p=`` the base64 raw 32-byte public key.
    """
    if algorithm == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=RSA_EXPONENT, key_size=RSA_BITS)
        private = rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    elif algorithm == "ed25519":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        seed = ed_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        private = base64.b64encode(seed) + b"\n"
    else:
        raise DkimKeyError(f"unknown algorithm {algorithm!r}; use rsa or ed25519")
    return KeyMaterial(algorithm, private, public_key_b64(algorithm, private))


def public_key_b64(algorithm: str, private_bytes: bytes) -> str:
    """The ``p=`` value belonging to a private key (PEM, or a base64 Ed25519 seed)."""
    try:
        if algorithm == "rsa":
            key = serialization.load_pem_private_key(private_bytes, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise DkimKeyError("the private key is not an RSA key")
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return base64.b64encode(der).decode("ascii")
        if algorithm == "ed25519":
            seed = base64.b64decode(private_bytes.strip(), validate=True)
            public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key()
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            return base64.b64encode(raw).decode("ascii")
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as exc:
        raise DkimKeyError(f"unreadable {algorithm} private key: {exc}") from exc
    raise DkimKeyError(f"unknown algorithm {algorithm!r}")


def key_record(algorithm: str, public_b64: str) -> str:
    """The TXT record text: ``v=DKIM1; k=…; p=…`` (RFC 6376 §3.6.1, RFC 8463 §4.2)."""
    return f"v=DKIM1; k={algorithm}; p={public_b64}"


def record_name(selector: str, domain: str) -> str:
    """Where a selector's key is published (RFC 6376 §3.6.2.1)."""
    return f"{selector}._domainkey.{domain}"


def check_selector(selector: str) -> str:
    """A selector in lowercase, or :class:`DkimKeyError` when it is not a valid sub-domain."""
    value = selector.strip().lower()
    if not value or len(value) > 63 or not _SELECTOR_RE.match(value):
        raise DkimKeyError(
            f"selector {selector!r} must be letters, digits and hyphens (RFC 6376 §3.1), "
            "at most 63 characters"
        )
    return value


def _default_selector(session: Session, domain: str, now: datetime) -> str:
    # Dated selectors say when a key was made, which is what rotation needs to know.
    base = f"ml{now:%Y%m}"
    taken = set(session.scalars(select(DkimKey.selector).where(DkimKey.domain == domain)))
    if base not in taken:
        return base
    suffix = 2
    while f"{base}-{suffix}" in taken:
        suffix += 1
    return f"{base}-{suffix}"


def customer_domain(session: Session, tenant: Tenant, domain: str) -> CustomerDomain:
    """The tenant's verified customer domain, or :class:`DkimKeyError` saying why not."""
    name = domain.strip().lower().rstrip(".")
    row = session.scalars(
        select(CustomerDomain).where(
            CustomerDomain.tenant_id == tenant.id, CustomerDomain.domain == name
        )
    ).one_or_none()
    if row is None:
        raise DkimKeyError(f"{name} is not a customer domain of tenant {tenant.name!r}")
    if not row.verified:
        # DESIGN §4: a domain the tenant added itself is not trusted until proven.
        raise DkimKeyError(f"customer domain {name} is not verified yet")
    return row


def create_key(
    session: Session,
    tenant: Tenant,
    domain: str,
    box: SecretBox,
    *,
    selector: str | None = None,
    algorithm: Algorithm = "rsa",
) -> DkimKey:
    """Generate a key for one of the tenant's domains and record it, the private half sealed.

    The domain's first key is ``active`` (signing still waits for ``verified_at``); later keys
    are rotations, made active by :func:`settle_active` once the check sees them published.
    """
    if algorithm not in ALGORITHMS:
        raise DkimKeyError(f"unknown algorithm {algorithm!r}; use rsa or ed25519")
    name = customer_domain(session, tenant, domain).domain
    now = utcnow()
    chosen = check_selector(selector) if selector else _default_selector(session, name, now)
    existing = session.scalars(
        select(DkimKey).where(DkimKey.domain == name, DkimKey.selector == chosen)
    ).first()
    if existing is not None:
        raise DkimKeyError(f"{record_name(chosen, name)} already has a key; pick another selector")
    first = (
        session.scalars(
            select(DkimKey.id).where(DkimKey.domain == name, DkimKey.retired_at.is_(None))
        ).first()
        is None
    )
    material = generate_key_material(algorithm)
    key = DkimKey(
        tenant_id=tenant.id,
        domain=name,
        selector=chosen,
        algorithm=algorithm,
        public_record=key_record(algorithm, material.public_b64),
        active=first,
        activated_at=now if first else None,
        created_at=now,
    )
    # One row holds both halves, committed together: no crash leaves one without the other.
    seal_private_key(key, box, material.private_bytes)
    session.add(key)
    session.flush()
    return key


# --- reading keys -----------------------------------------------------------------------------


def not_imported_reason(key: DkimKey) -> str:
    """Why a key made before keys moved into the database cannot sign yet, and the fix."""
    where = f" ({key.private_key_path})" if key.private_key_path else ""
    return (
        f"the private key of {record_name(key.selector, key.domain)} is still a file{where}: "
        "run `mailledger dkim import` on the node that holds it"
    )


def load_private_key(key: DkimKey, box: SecretBox) -> bytes:
    """The private key in the form ``dkim.sign(privkey=…)`` takes (PEM, or base64 Ed25519)."""
    try:
        return open_private_key(key, box)
    except PrivateKeyNotStoredError:
        raise DkimKeyError(not_imported_reason(key)) from None
    except SecretError as exc:
        raise DkimKeyError(
            f"cannot open the private key of {record_name(key.selector, key.domain)}: {exc}"
        ) from None


def our_public_key(key: DkimKey) -> str:
    """The ``p=`` value of the key's record, the public half kept beside the sealed private one.

    Both halves are written in one row when a key is made (an imported file is checked
    against the record first), so the record is our key; comparing DNS with it needs no
    secrets key, and ``mailledger dns check`` runs on any node. A key whose private half is
    not in the database yet is an error here: its record may be published, but nothing can
    sign with it.
    """
    if key.private_key is None:
        raise DkimKeyError(not_imported_reason(key))
    try:
        return re.sub(r"\s+", "", parse_tags(key.public_record)["p"])
    except (ValueError, KeyError):
        raise DkimKeyError(
            f"the stored record of {record_name(key.selector, key.domain)} has no p= key"
        ) from None


def domain_keys(
    session: Session, tenant: Tenant, domain: str | None = None, *, include_retired: bool = False
) -> list[DkimKey]:
    """A tenant's keys, oldest first, for one domain or all."""
    query = select(DkimKey).where(DkimKey.tenant_id == tenant.id)
    if domain is not None:
        query = query.where(DkimKey.domain == domain.strip().lower().rstrip("."))
    if not include_retired:
        query = query.where(DkimKey.retired_at.is_(None))
    return list(session.scalars(query.order_by(DkimKey.domain, DkimKey.created_at, DkimKey.id)))


def signing_key(session: Session, domain: str) -> DkimKey | None:
    """The key the relay may sign ``domain``'s mail with: active, verified, not retired."""
    return session.scalars(
        select(DkimKey).where(
            DkimKey.domain == domain.strip().lower().rstrip("."),
            DkimKey.active.is_(True),
            DkimKey.verified_at.is_not(None),
            DkimKey.retired_at.is_(None),
        )
    ).first()


# --- is it published? -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """What DNS holds for one key: ``ok`` only when it is published and matches our key."""

    domain: str
    selector: str
    name: str
    status: CheckStatus
    reason: str
    # The zone-file line that fixes it; empty when nothing needs doing.
    fix: str = ""
    published: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        """True when the published record verifies our signatures."""
        return self.status == "ok"


def parse_tags(text: str) -> dict[str, str]:
    """A DKIM tag=value list (RFC 6376 §3.2); ValueError on a bad tag or a repeated one."""
    tags: dict[str, str] = {}
    specs = text.strip().split(";")
    if specs and not specs[-1].strip():
        specs.pop()  # a trailing semicolon is allowed
    for spec in specs:
        key, sep, value = spec.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", key):
            raise ValueError(f"bad tag {spec.strip()!r}")
        if key in tags:
            raise ValueError(f"tag {key}= appears twice")
        tags[key] = value.strip()
    return tags


def _strings_note(strings: tuple[bytes, ...]) -> str:
    if len(strings) <= 1:
        return ""
    return (
        f" (published as {len(strings)} strings: "
        + "+".join(str(len(s)) for s in strings)
        + " bytes)"
    )


def _same_key(algorithm: str, published_b64: str, ours_b64: str) -> bool:
    """Compare keys, not text: an RSA key may be published as SPKI or as PKCS#1."""
    if published_b64 == ours_b64:
        return True
    if algorithm != "rsa":
        return False
    try:
        theirs = serialization.load_der_public_key(base64.b64decode(published_b64))
        ours = serialization.load_der_public_key(base64.b64decode(ours_b64))
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        return False
    if not isinstance(theirs, rsa.RSAPublicKey) or not isinstance(ours, rsa.RSAPublicKey):
        return False
    return theirs.public_numbers() == ours.public_numbers()


def judge_key_record(key: DkimKey, ours_b64: str, result: DNSResult) -> KeyCheck:
    """Compare a TXT lookup at the key's selector with our public key (no DNS here)."""
    name = record_name(key.selector, key.domain)
    expected = key_record(key.algorithm, ours_b64)
    fix = zone_line(name, "TXT", expected)

    def verdict(status: CheckStatus, reason: str, published: tuple[str, ...] = ()) -> KeyCheck:
        return KeyCheck(
            key.domain, key.selector, name, status, reason, "" if status == "ok" else fix, published
        )

    if result.status == "temperror":
        return verdict("error", f"could not look up {name}: {result.detail or 'temporary failure'}")
    if result.status == "permerror":
        return verdict("error", f"could not look up {name}: {result.detail or 'permanent error'}")
    if result.status != "ok" or not result.texts:
        return verdict("missing", f"no DKIM key record at {name}")
    texts = result.texts
    strings = (
        result.strings if len(result.strings) == len(texts) else tuple((t.encode(),) for t in texts)
    )
    candidates = [i for i, t in enumerate(texts) if "p=" in t or t.lstrip().startswith("v=DKIM1")]
    if not candidates:
        return verdict("wrong", f"the TXT record at {name} is not a DKIM key record", texts)
    if len(candidates) > 1:
        # RFC 6376 §3.6.2.2: several key records at one name give undefined results.
        return verdict(
            "wrong",
            f"{len(candidates)} TXT records at {name}: a key split into separate records, or an "
            "old key left behind; publish exactly one record",
            texts,
        )
    index = candidates[0]
    text = texts[index]
    if len(texts) > 1:
        return verdict(
            "wrong",
            f"{len(texts)} TXT records at {name}: a key record must be the only one, in one "
            "record (long keys are several strings of one record, not several records)",
            texts,
        )
    note = _strings_note(strings[index])
    if '"' in text:
        # The joined text holds quote marks: the strings were pasted with their quotes into a
        # panel that quotes again, so they became part of the data.
        return verdict(
            "wrong",
            f"the key at {name} is split badly: quote marks are part of the record{note}; "
            "enter the strings as the fix shows (without quotes if the panel splits it)",
            texts,
        )
    try:
        tags = parse_tags(text)
    except ValueError as exc:
        return verdict("wrong", f"malformed DKIM record at {name}: {exc}", texts)
    if "v" in tags and tags["v"] != "DKIM1":
        # RFC 6376 §3.6.1: v= when present must be DKIM1 (and first).
        return verdict("wrong", f"malformed DKIM record at {name}: v={tags['v']}, not DKIM1", texts)
    kind = tags.get("k", "rsa")
    if kind != key.algorithm:
        return verdict("wrong", f"{name} publishes a k={kind} key; ours is {key.algorithm}", texts)
    if "s" in tags and not {"*", "email"} & {s.strip() for s in tags["s"].split(":")}:
        return verdict("wrong", f"{name} is limited to s={tags['s']}, not email", texts)
    if "h" in tags and "sha256" not in {h.strip() for h in tags["h"].split(":")}:
        return verdict("wrong", f"{name} allows h={tags['h']}, but we sign with sha256", texts)
    if "p" not in tags:
        return verdict("wrong", f"malformed DKIM record at {name}: no p= tag", texts)
    # RFC 6376 §3.6.1: whitespace inside the base64 of p= is allowed and ignored.
    published = re.sub(r"\s+", "", tags["p"])
    if not published:
        return verdict("wrong", f"the key at {name} is revoked (empty p=)", texts)
    if not _BASE64_RE.match(published):
        return verdict("wrong", f"malformed DKIM record at {name}: p= is not base64{note}", texts)
    if _same_key(key.algorithm, published, ours_b64):
        testing = (
            " (t=y: receivers treat failures as testing)"
            if "y" in tags.get("t", "").split(":")
            else ""
        )
        return verdict("ok", f"{name} publishes our {key.algorithm} key{note}{testing}", texts)
    if len(published) < len(ours_b64) and ours_b64.startswith(published):
        return verdict(
            "wrong",
            f"the key at {name} is split badly: p= stops after {len(published)} of "
            f"{len(ours_b64)} characters{note}; a string of the record is missing",
            texts,
        )
    if ours_b64.startswith(published[: len(published) // 2]) and len(published) != len(ours_b64):
        return verdict(
            "wrong",
            f"the key at {name} is split badly: p= has {len(published)} characters, ours "
            f"{len(ours_b64)}{note}; a string is repeated or altered",
            texts,
        )
    return verdict("wrong", f"the key at {name} does not match our private key", texts)


def verify_key_published(resolver: Resolver, key: DkimKey) -> KeyCheck:
    """Look up the key's record and compare its ``p=`` with our key. Blocking.

    The relay's signer calls this and, on ``check.matches``, calls :func:`record_check`
    (which sets ``verified_at``); it never sets ``verified_at`` any other way.
    """
    return judge_key_record(
        key, our_public_key(key), resolver.txt_sync(record_name(key.selector, key.domain))
    )


async def verify_key_published_async(resolver: Resolver, key: DkimKey) -> KeyCheck:
    """:func:`verify_key_published` on the event loop (the key is already loaded)."""
    ours = our_public_key(key)
    return judge_key_record(key, ours, await resolver.txt(record_name(key.selector, key.domain)))


def record_check(key: DkimKey, check: KeyCheck, now: datetime | None = None) -> None:
    """Keep what the check saw: verified when it matches, unverified when missing or wrong.

    A temporary failure (``error``) changes nothing: the record may well still be there.
    """
    if check.status == "ok":
        if key.verified_at is None:
            key.verified_at = now or utcnow()
    elif check.status in ("missing", "wrong"):
        key.verified_at = None


def settle_active(session: Session, tenant: Tenant, domain: str) -> DkimKey | None:
    """Make the newest verified key of a domain the one signing uses (key rotation).

    A new key stays inactive until the check has seen it published; the key it replaces stays
    published and unretired, so signatures made with it keep verifying until it is retired.
    """
    keys = domain_keys(session, tenant, domain)
    verified = [k for k in keys if k.verified_at is not None]
    if not verified:
        return next((k for k in keys if k.active), None)
    newest = verified[-1]
    for key in keys:
        if key is newest and not key.active:
            key.activated_at = utcnow()
        key.active = key is newest
    session.flush()
    return newest


def retire_key(session: Session, tenant: Tenant, domain: str, selector: str) -> DkimKey:
    """Stop using a key for good; its record may then be removed from DNS."""
    name = domain.strip().lower().rstrip(".")
    key = session.scalars(
        select(DkimKey).where(
            DkimKey.tenant_id == tenant.id,
            DkimKey.domain == name,
            DkimKey.selector == selector.strip().lower(),
        )
    ).one_or_none()
    if key is None:
        raise DkimKeyError(f"tenant {tenant.name!r} has no key {record_name(selector, name)}")
    if key.retired_at is not None:
        raise DkimKeyError(f"{record_name(key.selector, name)} is already retired")
    if key.active:
        raise DkimKeyError(
            f"{record_name(key.selector, name)} is the active key; rotate to a new one first"
        )
    key.retired_at = utcnow()
    session.flush()
    return key
