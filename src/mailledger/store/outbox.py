"""The durable outbound queue (DESIGN §9): one row per message and recipient domain.

``enqueue`` stores the bytes once in the blob store and writes the rows in the caller's
transaction, so a submission listener that commits before answering ``250`` never loses an
accepted message. Delivery claims due rows with the lease every queue uses (``store.leases``:
owner, expiry, ``SKIP LOCKED`` on PostgreSQL): a row claimed by a process that died is taken
over once its lease lapses. Attempts are counted when a row is claimed, so an attempt cut
short by a crash counts. What is delivery's own stays here: the per-domain concurrency cap
and the ``Claim`` a delivery works from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Row, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.mail.replies import parse_reply
from mailledger.mail.statuscodes import status_words
from mailledger.store import leases
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    OutboundKind,
    OutboundMessage,
    OutboundState,
    utcnow,
)
from mailledger.store.quarantine import blob_in_use
from mailledger.store.queueids import QUEUE_ID_BYTES, new_queue_id

# A CR not followed by LF, or an LF not preceded by CR (RFC 5321 §2.3.8: lines end in CRLF
# only), or a NUL (RFC 5322 §3.5 / RFC 6532: never in a message).
_BAD_BYTES: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
# How many due rows the claim query looks at per free delivery slot: rows of a domain that is
# at its concurrency limit are skipped, so it reads a few more than it can take.
_CANDIDATES_PER_SLOT: Final = 4
FINAL_STATES: Final = frozenset(
    {OutboundState.DELIVERED, OutboundState.BOUNCED, OutboundState.EXPIRED}
)


class OutboxError(LookupError):
    """A queue command names no row, or asks for something its state does not allow."""


def check_outbound_bytes(raw: bytes) -> bytes:
    """The bytes to store and send: refused with ``ValueError`` if they hold a bare CR, LF or NUL.

    Nothing with a bare CR or LF leaves the relay (DESIGN §6): a receiver may read it as a line
    end where we did not, which is how SMTP smuggling works. A message that does not end with
    CRLF gets one, because SMTP cannot carry it otherwise (RFC 5321 §4.1.1.4) and DKIM body
    canonicalization adds the same CRLF (RFC 6376 §3.4.3), so signatures still verify.
    """
    match = _BAD_BYTES.search(raw)
    if match is not None:
        what = {b"\r": "bare CR", b"\n": "bare LF", b"\x00": "NUL"}[match.group()]
        raise ValueError(f"outbound message has a {what} at byte {match.start()}")
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw


def recipient_domain(address: str) -> str:
    """The domain an envelope recipient is delivered to: lowercase, as an A-label."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c in address for c in "\r\n\x00<> "):
        raise ValueError(f"not an envelope recipient address: {address!r}")
    domain = domain.lower().rstrip(".")
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # an address literal (RFC 5321 §4.1.3); delivered without MX lookup
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"recipient domain is not a valid IDN: {address!r}") from exc
    return domain


def enqueue(
    session: Session,
    blobs: BlobBackend,
    *,
    raw: bytes,
    mail_from: str,
    rcpt_to: list[str],
    kind: OutboundKind,
    tenant_id: int | None = None,
    staff_id: int | None = None,
    activity_id: int | None = None,
    signing: str = "",
    held: bool = False,
) -> list[OutboundMessage]:
    """Queue one message: its bytes once in the blob store, one row per recipient domain.

    The rows share one queue id and are added to ``session`` (flushed, not committed): the
    caller commits, then answers ``250``. The blob is fsynced before this returns, so the
    commit never refers to bytes that a crash could lose. ``held`` rows wait for an operator
    or a policy instead of being delivered. ``mail_from=""`` is the null reverse path (DSNs).
    """
    if not rcpt_to:
        raise ValueError("an outbound message needs at least one recipient")
    if any(c in mail_from for c in "\r\n\x00<> "):
        raise ValueError(f"not an envelope sender address: {mail_from!r}")
    data = check_outbound_bytes(raw)
    by_domain: dict[str, list[str]] = {}
    for address in rcpt_to:
        recipients = by_domain.setdefault(recipient_domain(address), [])
        if address not in recipients:
            recipients.append(address)
    digest = blobs.put(data)
    queue_id = new_queue_id()
    now = utcnow()
    state = OutboundState.HELD if held else OutboundState.QUEUED
    rows = [
        OutboundMessage(
            queue_id=queue_id,
            tenant_id=tenant_id,
            staff_id=staff_id,
            kind=kind,
            blob=digest,
            size=len(data),
            mail_from=mail_from,
            domain=domain,
            rcpt_to=recipients,
            state=state,
            attempts=0,
            retry_after=now,
            last_error="",
            results={},
            signing=signing,
            activity_id=activity_id,
            created_at=now,
        )
        for domain, recipients in by_domain.items()
    ]
    session.add_all(rows)
    session.flush()
    return rows


# --- claiming -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A row taken for one delivery attempt: what the worker needs, detached from any session."""

    id: int
    queue_id: str
    kind: OutboundKind
    blob: str
    size: int
    mail_from: str
    domain: str
    rcpt_to: tuple[str, ...]  # every recipient of the row
    pending: tuple[str, ...]  # those without a final result yet
    attempts: int  # including this one
    created_at: datetime


def pending_recipients(row: OutboundMessage) -> list[str]:
    """Recipients of a row without a final (2xx or 5xx) result."""
    return _pending(row.rcpt_to, row.results)


def _pending(rcpt_to: Sequence[str], results: Mapping[str, Any] | None) -> list[str]:
    known: Mapping[str, Any] = results or {}
    return [r for r in rcpt_to if not is_final(known.get(r))]


def is_final(result: Mapping[str, Any] | None) -> bool:
    """Whether a recipient's recorded result ends its delivery (delivered or refused for good)."""
    return result is not None and result.get("status") in ("delivered", "failed")


def claim_due(
    session: Session,
    *,
    owner: str,
    lease_seconds: float,
    slots: int,
    busy: Mapping[str, int] | None = None,
    max_per_domain: int | None = None,
    now: datetime | None = None,
) -> list[Claim]:
    """Claim up to ``slots`` due rows: queued, ``retry_after`` passed, unclaimed or lease lapsed.

    ``busy`` counts this node's deliveries in flight per domain; rows of a domain that would
    go over ``max_per_domain`` are left for later. Each claimed row's ``attempts`` goes up by
    one. Call inside ``sessions.begin()``: the claim is one transaction.
    """
    in_flight = dict(busy or {})

    def under_cap(row: Row[Any]) -> bool:
        count = in_flight.get(row.domain, 0)
        if max_per_domain is not None and count >= max_per_domain:
            return False
        in_flight[row.domain] = count + 1
        return True

    claimed = leases.claim(
        session,
        leases.DELIVERY,
        owner=owner,
        lease_seconds=lease_seconds,
        limit=slots,
        now=now,
        columns=_CLAIM_COLUMNS,
        candidates=slots * _CANDIDATES_PER_SLOT,
        take=under_cap,
    )
    return [_snapshot(lease) for lease in claimed]


def any_due(sessions: sessionmaker[Session], now: datetime | None = None) -> bool:
    """Whether a row is due for delivery, asked as a reader: an idle poll takes no write lock."""
    return leases.any_waiting(sessions, leases.DELIVERY, now)


def renew(session: Session, ids: Iterable[int], *, owner: str, lease_seconds: float) -> int:
    """Extend this owner's leases on rows still being delivered; returns how many it kept."""
    return leases.renew(session, leases.DELIVERY, ids, owner=owner, lease_seconds=lease_seconds)


def release(session: Session, ids: Iterable[int], *, owner: str) -> int:
    """Hand rows back unfinished (shutdown): due at once, for this node or another.

    The attempt stays counted: the delivery was under way when it was cut off.
    """
    return leases.release(session, leases.DELIVERY, ids, owner=owner)


# What a Claim is made of, read with the row it is claimed from.
_CLAIM_COLUMNS: Final = (
    OutboundMessage.queue_id,
    OutboundMessage.kind,
    OutboundMessage.blob,
    OutboundMessage.size,
    OutboundMessage.mail_from,
    OutboundMessage.domain,
    OutboundMessage.rcpt_to,
    OutboundMessage.results,
    OutboundMessage.created_at,
)


def _snapshot(lease: leases.Lease) -> Claim:
    row = lease.row
    return Claim(
        id=lease.id,
        queue_id=row.queue_id,
        kind=row.kind,
        blob=row.blob,
        size=row.size,
        mail_from=row.mail_from,
        domain=row.domain,
        rcpt_to=tuple(row.rcpt_to),
        pending=tuple(_pending(row.rcpt_to, row.results)),
        attempts=lease.attempts,
        created_at=row.created_at,
    )


# --- operator commands ----------------------------------------------------------------------


def find_rows(session: Session, ident: str) -> list[OutboundMessage]:
    """The rows an operator means by ``ident``: a row id (digits) or a queue id (all its rows)."""
    text = ident.strip()
    rows: list[OutboundMessage] = []
    if text.isdigit() and len(text) < 2 * QUEUE_ID_BYTES:
        row = session.get(OutboundMessage, int(text))
        if row is not None:
            rows = [row]
    if not rows:
        rows = list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.queue_id == text.upper())
                .order_by(OutboundMessage.id)
            )
        )
    if not rows:
        raise OutboxError(f"no queued message {ident}")
    return rows


def retry_now(session: Session, ident: str) -> list[OutboundMessage]:
    """Make the queued rows of ``ident`` due now; rows in other states are refused."""
    rows = find_rows(session, ident)
    queued = [row for row in rows if row.state is OutboundState.QUEUED]
    if not queued:
        states = ", ".join(sorted({row.state.value for row in rows}))
        raise OutboxError(f"{ident} is {states}, not queued: nothing to retry")
    now = utcnow()
    for row in queued:
        row.retry_after = now
    session.flush()
    return queued


def delete(session: Session, blobs: BlobBackend, ident: str) -> tuple[list[OutboundMessage], bool]:
    """Remove the rows of ``ident``, and their bytes when nothing else references them.

    Returns the removed rows and whether the blob went too. A delivery in flight finishes its
    SMTP transaction but finds no row to record it in. As in ``quarantine.delete``, the file
    goes after the reference check inside the transaction.
    """
    rows = find_rows(session, ident)
    digests = {row.blob for row in rows}
    for row in rows:
        session.delete(row)
    session.flush()
    removed = False
    for digest in digests:
        if blob_in_use(session, digest):
            continue
        blobs.delete(digest)
        removed = True
    return rows, removed


def list_rows(
    session: Session,
    state: OutboundState | None = None,
    *,
    limit: int = 100,
    tenant_id: int | None = None,
) -> Sequence[OutboundMessage]:
    """Queue rows, newest first, optionally in one state or of one tenant (the API)."""
    query = select(OutboundMessage).order_by(OutboundMessage.id.desc()).limit(limit)
    if state is not None:
        query = query.where(OutboundMessage.state == state)
    if tenant_id is not None:
        query = query.where(OutboundMessage.tenant_id == tenant_id)
    return list(session.scalars(query))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def row_dict(row: OutboundMessage) -> dict[str, Any]:
    """One queue row as plain data, as ``queue list --json`` prints it: the API's shape too."""
    results = row.results or {}
    return {
        "id": row.id,
        "queue_id": row.queue_id,
        "kind": row.kind.value,
        "state": row.state.value,
        "mail_from": row.mail_from or "<>",
        "domain": row.domain,
        "rcpt_to": list(row.rcpt_to),
        "attempts": row.attempts,
        "next_try": _iso(row.retry_after) if row.state is OutboundState.QUEUED else None,
        "last_error": row.last_error,
        "size": row.size,
        "signing": row.signing,
        "activity_id": row.activity_id,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
        "results": [
            {
                "rcpt": rcpt,
                "status": results.get(rcpt, {}).get("status", "pending"),
                "code": results.get(rcpt, {}).get("code"),
                "reply": results.get(rcpt, {}).get("reply", ""),
                "at": results.get(rcpt, {}).get("at"),
                "attempt": results.get(rcpt, {}).get("attempt"),
            }
            for rcpt in row.rcpt_to
        ],
    }


def _latest_result(row: OutboundMessage) -> dict[str, Any] | None:
    """The recipient result that explains the row's state, latest first (UTC ISO times sort
    as text): of a row not delivered, a recipient's that was not delivered."""
    found = [r for r in (row.results or {}).values() if isinstance(r, dict) and r.get("at")]
    if row.state is not OutboundState.DELIVERED:
        found = [r for r in found if r.get("status") != "delivered"] or found
    return max(found, key=lambda r: str(r["at"]), default=None)


def reply_in_words(row: OutboundMessage) -> str:
    """Where a queue row stands and the last reply that put it there, for a person to read.

    The reply is quoted as the remote host gave it, with the meaning of its enhanced status
    code (RFC 3463) in front, so "450 4.2.2" reads as "the mailbox is full: a temporary
    failure" without knowing the codes.
    """
    if row.state is OutboundState.HELD:
        return f"held, not sent: {row.signing or 'waiting for `mailledger queue release`'}"
    latest = _latest_result(row)
    if latest is None:
        return "not tried yet" if row.state is OutboundState.QUEUED else row.last_error
    line = str(latest.get("reply") or row.last_error)
    code = latest.get("code")
    status = (
        parse_reply(int(code), str(latest.get("text", ""))).status if isinstance(code, int) else ""
    )
    meaning = status_words(status)
    said = f"{meaning}; the server said: {line}" if meaning else f"the server said: {line}"
    if row.state is OutboundState.DELIVERED:
        return f"delivered; the server said: {line}"
    if row.state is OutboundState.QUEUED:
        return f"will try again: {said}"
    if row.state is OutboundState.EXPIRED:
        return f"gave up after {row.attempts} attempts: {said}"
    return f"refused for good: {said}"
