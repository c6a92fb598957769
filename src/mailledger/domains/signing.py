"""DKIM-signing relayed mail as the From domain, only with a key that is published and verified.

A signature with a key receivers cannot find fails DKIM, which is worse than none (a DMARC
``p=reject`` domain's mail would bounce). So the tenant's active key for the From domain signs
only once the live check saw its record published and matching (STYLE: Postal's
``dkim_header.rb``); until then the configured policy applies (``[relay] unsigned_policy``:
hold the message, or send it unsigned) and what happened is recorded on the outbound rows.
The check itself is ``domains.keys.verify_key_published_async``, shared with ``mailledger dns
check``, so the relay and the operator see the same verdict.

The private key comes from the database, sealed (``store.dkimkeys``), and is opened with
``[secrets] key_file`` for each message: every node signs with the same key, no node needs a
key file, and a secrets key changed on disk (a new line on top) is used without a restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import dkim
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import RelaySettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.keys import (
    DkimKeyError,
    KeyCheck,
    load_private_key,
    record_check,
    record_name,
    verify_key_published_async,
)
from mailledger.logs import get_logger
from mailledger.store.engine import reading
from mailledger.store.models import DkimKey
from mailledger.store.secretbox import SecretBox, SecretError

log = get_logger(__name__)

# The headers we sign when present (RFC 6376 §5.4.1). From is listed twice: the second
# instance signs its absence, so nobody can add a second From that a reader might show
# instead ("oversigning", RFC 6376 §8.15).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)
_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


@dataclass(frozen=True, slots=True)
class SigningOutcome:
    """The bytes to queue, what signing did (``OutboundMessage.signing``), whether to hold."""

    raw: bytes
    signing: str
    held: bool = False


def active_key(session: Session, tenant_id: int, domain: str) -> DkimKey | None:
    """The tenant's active, unretired key for ``domain``, verified or not.

    Filtered by tenant as well as domain: a key is used only for the tenant that made it.
    """
    return session.scalars(
        select(DkimKey)
        .where(
            DkimKey.tenant_id == tenant_id,
            DkimKey.domain == domain.strip().lower().rstrip("."),
            DkimKey.active.is_(True),
            DkimKey.retired_at.is_(None),
        )
        .order_by(DkimKey.id.desc())
        .limit(1)
    ).first()


def dkim_signature(raw: bytes, key: DkimKey, private: bytes) -> bytes:
    """The DKIM-Signature header (CRLF-terminated) for ``raw``; whole body, no ``l=``.

    ``l=`` would let anyone append text under our signature (RFC 6376 §8.2).
    """
    algorithm = _ALGORITHMS.get(key.algorithm)
    if algorithm is None:
        raise DkimKeyError(f"unknown DKIM algorithm {key.algorithm!r}")
    header = dkim.sign(
        raw,
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        private,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=list(SIGNED_HEADERS),
        length=False,
    )
    return bytes(header)


def _signature(raw: bytes, key: DkimKey, key_file: str | Path) -> bytes:
    # One worker-thread hop for opening and signing: both are CPU work off the event loop.
    return dkim_signature(raw, key, _private_key(key, key_file))


def _unsigned(raw: bytes, why: str, relay: RelaySettings) -> SigningOutcome:
    if relay.unsigned_policy == "hold":
        return SigningOutcome(raw, f"held: {why}", held=True)
    return SigningOutcome(raw, f"unsigned: {why}")


def _load(sessions: sessionmaker[Session], tenant_id: int, domain: str) -> DkimKey | None:
    with reading(sessions) as session:
        key = active_key(session, tenant_id, domain)
        if key is not None:
            session.expunge(key)
        return key


def _private_key(key: DkimKey, key_file: str | Path) -> bytes:
    """The key's private half, opened with the box of ``key_file``."""
    try:
        box = SecretBox.from_file(key_file)
    except SecretError as exc:
        raise DkimKeyError(str(exc)) from None
    return load_private_key(key, box)


def _mark_verified(sessions: sessionmaker[Session], key_id: int, check: KeyCheck) -> None:
    with sessions.begin() as session:
        key = session.get(DkimKey, key_id)
        if key is not None:
            record_check(key, check)


async def sign_outgoing(
    sessions: sessionmaker[Session],
    resolver: Resolver,
    relay: RelaySettings,
    *,
    raw: bytes,
    tenant_id: int,
    from_domain: str,
    key_file: str | Path,
) -> SigningOutcome:
    """Sign ``raw`` with the tenant's key for ``from_domain``, or apply the unsigned policy.

    ``key_file`` is ``[secrets] key_file``, which opens the sealed private key.
    """
    key = await asyncio.to_thread(_load, sessions, tenant_id, from_domain)
    if key is None:
        return _unsigned(raw, f"no DKIM key for {from_domain}", relay)
    name = record_name(key.selector, key.domain)
    try:
        if key.verified_at is None:
            check = await verify_key_published_async(resolver, key)
            if not check.matches:
                log.info("DKIM key not verified", key=name, status=check.status)
                return _unsigned(raw, f"DKIM key {name} not verified: {check.reason}", relay)
            await asyncio.to_thread(_mark_verified, sessions, key.id, check)
            log.info("DKIM key verified", key=name)
        signature = await asyncio.to_thread(_signature, raw, key, key_file)
    except (DkimKeyError, dkim.DKIMException) as exc:
        log.warning("DKIM signing failed", key=name, error=str(exc))
        return _unsigned(raw, f"DKIM signing with {name} failed: {exc}", relay)
    return SigningOutcome(signature + raw, f"signed d={key.domain} s={key.selector}")
