"""Forwarding set-up through the relay (DESIGN §6): hand-back and the round-trip check.

**Hand-back.** Gmail proves a forwarding address by mailing it a code; ours is a capture
address nobody reads, so processing keeps the code (``ForwardingConfirmation``) and this module
queues the original mail, byte for byte, to the staff member's primary address. Unmodified,
Google's own DKIM signature still verifies there and DMARC for google.com passes; the envelope
sender is ours, so SPF passes for our domain. Once forwarding works, the handed-back copy
arrives at the capture address a second time: it is recognised by its Message-ID and not
handed back again (that would loop for ever).

**Forwarding check.** Not every provider sends a code (Microsoft 365 sends none and may block
external forwarding). ``staff verify-forwarding`` mails a challenge holding an unguessable,
expiring token to the staff member's mailbox through the relay, DKIM-signed when the tenant's
domain has a verified key. When the copy comes back through their forwarding rule to their
capture address, processing calls :func:`prove_forwarding`: the check is proven, and what the
forwarded copy looked like (envelope pattern, DKIM and ARC signers) is kept for ``staff show``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.signing import sign_outgoing
from mailledger.forwarding.fixes import PROVIDER_NAMES, fix_steps, provider_of
from mailledger.logs import get_logger
from mailledger.mail.addresses import AddressError, capture_address, normalize, parse_address
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import finds_any, is_postgres
from mailledger.store.models import (
    CustomerDomain,
    ForwardingCheck,
    ForwardingConfirmation,
    ForwardingHealth,
    OutboundKind,
    ReceivedMessage,
    Staff,
    StaffAddress,
    Tenant,
    utcnow,
)
from mailledger.store.outbox import enqueue
from mailledger.verify.results import AuthOutcome
from mailledger.verify.trust import GMAIL_FORWARD_TAG

log = get_logger(__name__)

CHECK_HEADER = "X-Mailledger-Forwarding-Check"
CHECK_LIFETIME = timedelta(days=2)
CHECK_SENDER_LOCAL = "forwarding-check"
HANDBACK_SENDER_LOCAL = "forwarding-handback"
TOKEN_BYTES = 24  # 192 bits: nobody guesses it, and only the staff member's mailbox sees it

PENDING = "pending"
SENT = "sent"
DUPLICATE = "duplicate"  # the same confirmation came back through working forwarding
_PENDING = select(ForwardingConfirmation.id).where(ForwardingConfirmation.handback_state == PENDING)

PROVEN = "proven"
BROKEN = "broken"  # forwarding_health: a proven forward stopped (forwarding/health.py)
ALREADY_PROVEN = "already-proven"
EXPIRED = "expired"
UNKNOWN = "unknown"


# --- hand-back ------------------------------------------------------------------------------


def hand_back_pending(session: Session, blobs: BlobBackend, settings: Settings) -> list[int]:
    """Queue every pending confirmation to its staff member's primary address; their ids.

    Call inside a transaction; on PostgreSQL the rows are locked with SKIP LOCKED, so two
    nodes never hand the same confirmation back twice.
    """
    query = (
        select(ForwardingConfirmation)
        .where(ForwardingConfirmation.handback_state == PENDING)
        .order_by(ForwardingConfirmation.id)
        .limit(100)
    )
    if is_postgres(session.get_bind().engine):
        query = query.with_for_update(skip_locked=True)
    done: list[int] = []
    sender = f"{HANDBACK_SENDER_LOCAL}@{settings.service.hostname}"
    for row in session.scalars(query):
        message = session.get_one(ReceivedMessage, row.message_id)
        staff = session.get_one(Staff, row.staff_id)
        if _already_handed_back(session, row, message):
            row.handback_state = DUPLICATE
            log.info("forwarding confirmation came back; not handed back again", id=row.id)
            continue
        enqueue(
            session,
            blobs,
            raw=blobs.get(message.blob),
            mail_from=sender,
            rcpt_to=[staff.primary_address],
            kind=OutboundKind.HANDBACK,
            tenant_id=row.tenant_id,
            staff_id=staff.id,
            signing="unmodified: the provider's own DKIM signature is kept",
        )
        row.handback_state = SENT
        done.append(row.id)
        log.info("forwarding confirmation handed back", id=row.id, to=staff.primary_address)
    return done


def _already_handed_back(
    session: Session, row: ForwardingConfirmation, message: ReceivedMessage
) -> bool:
    if not message.message_id:
        return False
    earlier = session.scalars(
        select(ForwardingConfirmation.id)
        .join(ReceivedMessage, ReceivedMessage.id == ForwardingConfirmation.message_id)
        .where(
            ForwardingConfirmation.staff_id == row.staff_id,
            ForwardingConfirmation.id != row.id,
            ForwardingConfirmation.handback_state == SENT,
            ReceivedMessage.message_id == message.message_id,
        )
        .limit(1)
    ).first()
    return earlier is not None


class HandbackRunner:
    """Hands back pending confirmations as processing finds them, until stopped."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        blobs: BlobBackend,
        settings: Settings,
        *,
        on_queued: list[Any] | None = None,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._settings = settings
        self._on_queued = on_queued or []
        self._wakeup = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Look now rather than at the next poll."""
        self._wakeup.set()

    def run_once(self) -> list[int]:
        """One pass in one transaction, when anything is pending; the ids handed back."""
        if not finds_any(self._sessions, _PENDING):
            return []
        with self._sessions.begin() as session:
            return hand_back_pending(session, self._blobs, self._settings)

    async def run(self) -> None:
        """Poll at the processing interval; a failed pass is logged and retried."""
        poll = self._settings.processing.poll_interval_seconds
        while not self._stopping:
            try:
                done = await asyncio.to_thread(self.run_once)
            except Exception:  # a database hiccup must not stop the service
                log.exception("hand-back pass failed")
                done = []
            if done:
                for callback in self._on_queued:
                    callback()
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), poll)

    async def stop(self) -> None:
        """Stop after the pass in hand."""
        self._stopping = True
        self._wakeup.set()


# --- the round-trip forwarding check ---------------------------------------------------------


def _challenge_domain(session: Session, tenant: Tenant, staff: Staff, settings: Settings) -> str:
    """The tenant's own domain to send the challenge as (so it can be signed), else ours."""
    domains = list(
        session.scalars(
            select(CustomerDomain.domain)
            .where(CustomerDomain.tenant_id == tenant.id, CustomerDomain.verified.is_(True))
            .order_by(CustomerDomain.id)
        )
    )
    primary_domain = staff.primary_address.rpartition("@")[2].lower()
    if primary_domain in domains:
        return primary_domain
    return domains[0] if domains else settings.service.hostname


def challenge_message(
    staff: Staff, tenant: Tenant, token: str, sender: str, expires: str
) -> EmailMessage:
    """The challenge: the token in a header (which forwarding keeps) and in the text."""
    target = capture_address(staff.username, tenant.capture_domain)
    msg = EmailMessage()
    msg["From"] = f"mailledger forwarding check <{sender}>"
    msg["To"] = staff.primary_address
    msg["Subject"] = f"Forwarding check for {target}"
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no vacation replies to this
    msg[CHECK_HEADER] = token
    msg.set_content(
        f"This message checks that mail to {staff.primary_address} is forwarded to\n"
        f"{target}. You need not do anything: if forwarding works, mailledger sees this\n"
        f"message come back and marks forwarding as proven.\n\n"
        f"Check token: {token}\nValid until: {expires}\n"
    )
    return msg


async def send_challenge(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    settings: Settings,
    resolver: Resolver,
    *,
    staff_id: int,
    now: datetime | None = None,
) -> ForwardingCheck:
    """Create a forwarding check for a staff member and queue its challenge through the relay.

    ``now`` is when the check counts as sent (the health pass passes its own clock).
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    sent_at = now or utcnow()
    expires_at = sent_at + CHECK_LIFETIME
    with sessions() as session:
        staff = session.get_one(Staff, staff_id)
        tenant = session.get_one(Tenant, staff.tenant_id)
        domain = _challenge_domain(session, tenant, staff, settings)
        sender = f"{CHECK_SENDER_LOCAL}@{domain}"
        raw = challenge_message(staff, tenant, token, sender, format_datetime(expires_at)).as_bytes(
            policy=policy.SMTP
        )
        tenant_id, rcpt = tenant.id, staff.primary_address
    # A challenge is never held for want of a key: whether it arrives is what we want to see.
    relay = settings.relay.model_copy(update={"unsigned_policy": "send"})
    outcome = await sign_outgoing(
        sessions,
        resolver,
        relay,
        raw=raw,
        tenant_id=tenant_id,
        from_domain=domain,
        key_file=settings.secrets.key_file,
    )
    with sessions.begin() as session:
        enqueue(
            session,
            blobs,
            raw=outcome.raw,
            mail_from=sender,
            rcpt_to=[rcpt],
            kind=OutboundKind.CHALLENGE,
            tenant_id=tenant_id,
            staff_id=staff_id,
            signing=outcome.signing,
        )
        check = ForwardingCheck(
            staff_id=staff_id, token=token, sent_at=sent_at, expires_at=expires_at
        )
        session.add(check)
    log.info("forwarding check sent", staff=staff_id, to=rcpt, signing=outcome.signing)
    return check


def challenge_token(headers: dict[str, list[str]]) -> str:
    """The check token of a message (``""`` when it is not a challenge)."""
    values = headers.get(CHECK_HEADER.lower(), [])
    return " ".join(values[0].split()) if len(values) == 1 else ""


def envelope_pattern(mail_from: str, capture: str, own: frozenset[str]) -> str:
    """How the forwarder rewrote the envelope sender, in words an operator recognises."""
    if not mail_from:
        return "null sender"
    try:
        box = parse_address(mail_from)
    except AddressError:
        return "unparseable"
    local = box.local.lower()
    if GMAIL_FORWARD_TAG in local:
        target = local.split(GMAIL_FORWARD_TAG, 1)[1]
        user, _, domain = target.rpartition("=")
        base = f"{local.split(GMAIL_FORWARD_TAG, 1)[0]}@{box.domain}"
        named = f"{user}@{domain}" == capture.lower()
        owner = "own address" if normalize(base) in own else "another address"
        return f"gmail +caf_ tag ({owner}{', names the capture address' if named else ''})"
    if local.startswith(("srs0=", "srs1=")):
        return f"SRS rewrite by {box.domain}"
    if normalize(box) in own:
        return "own address"
    if local.startswith(CHECK_SENDER_LOCAL):
        return "original sender kept (redirect)"
    return f"other sender at {box.domain}"


def prove_forwarding(
    session: Session,
    message: ReceivedMessage,
    *,
    staff_id: int,
    capture: str,
    token: str,
    auth: AuthOutcome,
) -> str:
    """Mark the staff member's check proven and keep what the forwarded copy looked like.

    Returns ``proven``, ``already-proven``, ``expired`` or ``unknown`` (no such check for
    this staff member: a token is only ever good for the mailbox it was sent to).
    """
    check = session.scalars(
        select(ForwardingCheck).where(
            ForwardingCheck.token == token, ForwardingCheck.staff_id == staff_id
        )
    ).first()
    if check is None:
        return UNKNOWN
    if check.proven_at is not None:
        return ALREADY_PROVEN
    now = utcnow()
    if check.expires_at < now:
        return EXPIRED
    own = frozenset(
        session.scalars(select(StaffAddress.address).where(StaffAddress.staff_id == staff_id))
    )
    check.proven_at = now
    check.observed = {
        "envelope_sender": message.mail_from,
        "envelope_pattern": envelope_pattern(message.mail_from, capture, own),
        "peer": message.peer,
        "spf": f"{auth.spf.result} ({auth.spf.domain})" if auth.spf.domain else auth.spf.result,
        "dkim_signers": [f"{r.domain} ({r.result})" for r in auth.dkim],
        "arc": auth.arc.result,
        "arc_sealers": list(auth.arc.sealers),
        "received_at": message.received_at.isoformat(),
    }
    # A forward that was broken works again: say so now, not at the next health pass.
    session.execute(
        update(ForwardingHealth)
        .where(ForwardingHealth.staff_id == staff_id, ForwardingHealth.state != PROVEN)
        .values(state=PROVEN, since=now, reason="", detail="", notified_at=None)
        .execution_options(synchronize_session=False)
    )
    return PROVEN


def forwarding_status(session: Session, staff: Staff) -> dict[str, Any]:
    """The staff member's forwarding: their latest proof (or check), and whether it broke.

    ``state`` is ``never checked``, ``waiting``, ``expired``, ``proven`` or ``broken``; a
    broken forward also has ``broken_since``, ``broken_reason`` (``no-return`` or
    ``silence``), ``broken_detail`` (what was seen, in words), ``provider`` and ``fix`` (the
    steps that mend it, for the provider that forwards their mail).
    """
    check = session.scalars(
        select(ForwardingCheck)
        .where(ForwardingCheck.staff_id == staff.id)
        .order_by(ForwardingCheck.proven_at.is_(None), ForwardingCheck.id.desc())
        .limit(1)
    ).first()
    if check is None:
        return {"state": "never checked"}
    if check.proven_at is not None:
        state = "proven"
    elif check.expires_at < utcnow():
        state = "expired"
    else:
        state = "waiting"
    status: dict[str, Any] = {
        "state": state,
        "sent_at": check.sent_at.isoformat(),
        "expires_at": check.expires_at.isoformat(),
        "proven_at": check.proven_at.isoformat() if check.proven_at else None,
        "observed": dict(check.observed or {}),
    }
    health = session.scalars(
        select(ForwardingHealth).where(ForwardingHealth.staff_id == staff.id)
    ).first()
    if health is not None and health.state == BROKEN and check.proven_at is not None:
        tenant = session.get_one(Tenant, staff.tenant_id)
        provider = provider_of(status["observed"], staff.primary_address)
        status |= {
            "state": BROKEN,
            "broken_since": health.since.isoformat(),
            # For people: the pages and the mail say it so.
            "broken_since_text": health.since.strftime("%Y-%m-%d %H:%M UTC"),
            "proven_at_text": check.proven_at.strftime("%Y-%m-%d %H:%M UTC"),
            "broken_reason": health.reason,
            "broken_detail": health.detail,
            "notified_at": health.notified_at.isoformat() if health.notified_at else None,
            "provider": PROVIDER_NAMES[provider],
            "fix": fix_steps(provider, capture_address(staff.username, tenant.capture_domain)),
        }
    return status


def forwarding_brief(session: Session, staff: Staff) -> dict[str, Any]:
    """The forwarding state for staff lists: ``state``, ``since`` and ``reason``.

    ``since`` is when the state began: the proof for ``proven``, the breakage for ``broken``,
    the check sent for ``waiting`` and ``expired``; ``None`` when never checked.
    """
    status = forwarding_status(session, staff)
    state = status["state"]
    since = {
        BROKEN: status.get("broken_since"),
        PROVEN: status.get("proven_at"),
    }.get(state, status.get("sent_at"))
    return {"state": state, "since": since, "reason": status.get("broken_reason", "")}


def brief_words(brief: dict[str, Any]) -> str:
    """A brief as a table cell reads it: ``broken since 2026-12-01T10:00:00+00:00 (silence)``."""
    if brief["state"] == BROKEN:
        return f"broken since {brief['since']} ({brief['reason']})"
    return str(brief["state"])
