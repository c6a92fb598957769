"""Sending as a staff member: the steps every way of sending shares (DESIGN §4 relay rule, §6).

Mail a staff member sends reaches the relay by SMTP submission after AUTH
(``relay.submission``) or composed by the CRM through ``POST /v1/messages``. Either way the
same function takes it from there, so both are held to one rule and leave one kind of record:
screened (bare CR or LF, NUL, header size: refused), parsed within the MIME bounds, checked
against the sender rules (``relay.ownership``: a MAIL FROM and exactly one From, both the
login's own verified addresses), given our Received line (and a Date and Message-ID when
missing), DKIM-signed (``domains.signing``), and then, in one transaction: queued for delivery
(``store.outbox``) and stored on the tenant's log route by the one writer of received messages
(``store.inbox.add_received``), so the processing worker records it as one outbound activity.

Every refusal is a ``Reply`` (code, enhanced status, text): the SMTP listener answers it as is,
the API turns it into a problem document.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as DBSession
from sqlalchemy.orm import sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.signing import SigningOutcome, sign_outgoing
from mailledger.logs import get_logger
from mailledger.mail import replies
from mailledger.mail.addresses import (
    AddressError,
    Mailbox,
    capture_address,
    normalize,
    parse_address,
)
from mailledger.mail.compose import new_message_id
from mailledger.mail.headerscan import message_id_in_head
from mailledger.mail.parsing import ParsedMessage, ParseFailure, parse_message
from mailledger.mail.replies import Reply
from mailledger.relay import submission_replies as answers
from mailledger.relay.ownership import Login, check_envelope_sender, check_from_header, owns
from mailledger.smtp import screening
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.directory import DirectoryError, find_staff
from mailledger.store.inbox import Received, Route, SessionFacts, TraceLine, add_received
from mailledger.store.models import (
    CustomerDomain,
    OutboundKind,
    RouteKind,
    Staff,
    StaffAddress,
    Tenant,
)
from mailledger.store.outbox import check_outbound_bytes, enqueue
from mailledger.store.queueids import new_queue_id

log = get_logger(__name__)

_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-:\[\]_]")
SUBMISSION_PROTOCOL = "ESMTPSA"  # RFC 3848: ESMTP with STARTTLS and AUTH
API_PROTOCOL = "HTTP"  # the API's request; Received's "with" names how the mail came to us


@dataclass(frozen=True, slots=True)
class Queued:
    """What an accepted message became: its queue id, Message-ID, and how it was signed."""

    queue_id: str
    message_id: str  # without brackets
    relayed: int  # recipients sent on (a log@ copy is captured, not relayed)
    signing: str


def login_for(session: DBSession, staff: Staff, tenant: Tenant) -> Login:
    """The sending identity of a staff member: their verified own addresses (DESIGN §4)."""
    own = session.scalars(
        select(StaffAddress.address).where(
            StaffAddress.staff_id == staff.id, StaffAddress.verified.is_(True)
        )
    )
    return Login(
        staff_id=staff.id,
        tenant_id=tenant.id,
        username=capture_address(staff.username, tenant.capture_domain),
        own_addresses=frozenset(own),
        strip_plus=tenant.strip_plus_tags,
        log_address=capture_address("log", tenant.capture_domain),
    )


def prepare_message(
    raw: bytes,
    parsed: ParsedMessage,
    *,
    helo: str,
    hostname: str,
    from_domain: str,
    protocol: str = SUBMISSION_PROTOCOL,
) -> bytes:
    """Add our Received line, and a Date and Message-ID when the client left them out.

    RFC 6409 §8.2/§8.3 let a submission server add Date and Message-ID; the Message-ID is in
    the From domain, never ours (ours marks our own mail, which capture treats as a loop).
    Received (RFC 5321 §4.4) names no client IP address: staff send from home networks, and
    the address would reach every recipient.
    """
    now = datetime.now(UTC)
    name = _HELO_SAFE.sub("", helo)[:100] or "unknown"
    added = f"Received: from {name}\r\n\tby {hostname} (mailledger) with {protocol};\r\n"
    added += f"\t{format_datetime(now)}\r\n"
    if "date" not in parsed.headers:
        added += f"Date: {format_datetime(now)}\r\n"
    if not parsed.message_id:
        added += f"Message-ID: <{new_message_id(from_domain)}>\r\n"
    return added.encode("ascii") + raw


def is_log_copy(rcpt: str, login: Login) -> bool:
    """A copy to the tenant's own log@ address: captured here, never relayed (DESIGN §6)."""
    try:
        return normalize(rcpt) == login.log_address
    except AddressError:
        return False


class StaffSender:
    """Takes a staff member's message through the relay's checks into the queue and the record."""

    def __init__(
        self,
        sessions: sessionmaker[DBSession],
        blobs: BlobBackend,
        settings: Settings,
        resolver: Resolver,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._settings = settings
        self._resolver = resolver

    async def send(
        self, login: Login, raw: bytes, facts: SessionFacts, *, protocol: str = SUBMISSION_PROTOCOL
    ) -> Queued | Reply:
        """Check, sign, queue and record ``raw`` for ``login``; the refusal if any rule fails.

        ``facts`` carries the envelope (MAIL FROM, recipients) and how the message came in.
        Nothing is stored unless everything passed; what is stored is committed on return.
        """
        limits = self._settings.capture
        # Bare CR or LF first: nothing with them is ever relayed (SMTP smuggling).
        refusal = screening.screen(raw, limits)
        if refusal is None:
            refusal = check_envelope_sender(login, facts.mail_from)
        if refusal is not None:
            log.warning("message refused", user=login.username, reply=str(refusal))
            return refusal
        try:
            parsed = await asyncio.to_thread(
                parse_message,
                raw,
                received_at=datetime.now(UTC),
                max_depth=limits.max_mime_depth,
                max_parts=limits.max_mime_parts,
            )
        except ParseFailure as exc:
            return answers.UNPARSEABLE.with_text(f"Message could not be parsed: {exc}")
        refusal = check_from_header(login, parsed)
        if refusal is not None:
            log.warning("From refused", user=login.username, reply=str(refusal))
            return refusal
        sender = parsed.from_list.mailboxes[0]
        rcpts = list(dict.fromkeys(facts.rcpt_to))
        relayed = [r for r in rcpts if not is_log_copy(r, login)]
        try:
            prepared = check_outbound_bytes(
                prepare_message(
                    raw,
                    parsed,
                    helo=facts.helo,
                    hostname=self._settings.service.hostname,
                    from_domain=sender.domain,
                    protocol=protocol,
                )
            )
        except ValueError as exc:
            return replies.BARE_NEWLINE.with_text(str(exc))
        if relayed:
            outcome = await sign_outgoing(
                self._sessions,
                self._resolver,
                self._settings.relay,
                raw=prepared,
                tenant_id=login.tenant_id,
                from_domain=sender.domain,
                key_file=self._settings.secrets.key_file,
            )
        else:
            outcome = SigningOutcome(prepared, "not relayed: only the log@ copy")
        try:
            queue_id = await asyncio.to_thread(self._store, login, facts, relayed, outcome)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            log.exception("submitted message not stored", error=type(exc).__name__)
            return replies.STORAGE_FAILED
        log.info(
            "message submitted",
            user=login.username,
            queue_id=queue_id,
            recipients=len(relayed),
            signing=outcome.signing,
            via=protocol,
        )
        return Queued(
            queue_id=queue_id,
            message_id=message_id_in_head(outcome.raw),
            relayed=len(relayed),
            signing=outcome.signing,
        )

    def _store(
        self, login: Login, facts: SessionFacts, relayed: list[str], outcome: SigningOutcome
    ) -> str:
        """Queue for delivery and store for capture in one transaction; the queue id."""
        with self._sessions.begin() as session:
            queue_id = new_queue_id()
            if relayed:
                rows = enqueue(
                    session,
                    self._blobs,
                    raw=outcome.raw,
                    mail_from=parse_address(facts.mail_from).address,
                    rcpt_to=relayed,
                    kind=OutboundKind.RELAY,
                    tenant_id=login.tenant_id,
                    staff_id=login.staff_id,
                    signing=outcome.signing,
                    held=outcome.held,
                )
                queue_id = rows[0].queue_id
            # Content-addressed: the same bytes as the queued copy share one blob.
            digest = self._blobs.put(outcome.raw)
            detail = (
                f"submitted by {login.username}, {len(relayed)} recipient(s) relayed "
                f"({outcome.signing or 'unsigned'}), {len(outcome.raw)} bytes, "
                f"peer {facts.peer}, tls {facts.tls}, trace {facts.trace_id}"
            )
            log_route = Route(login.tenant_id, RouteKind.LOG, login.staff_id, login.log_address)
            add_received(
                session,
                [
                    Received(
                        queue_id=queue_id,
                        facts=facts,
                        routes=[log_route],
                        blob=digest,
                        size=len(outcome.raw),
                        first=TraceLine("submission", "accepted", detail),
                        submitted_by_staff_id=login.staff_id,
                        message_id=message_id_in_head(outcome.raw),
                    )
                ],
            )
        return queue_id


# --- who sends: the staff member behind mail the API composes --------------------------------


class SenderError(Exception):
    """The staff member or From address cannot send; ``field`` names what to fix."""

    def __init__(self, field: str, text: str, *, not_found: bool = False) -> None:
        super().__init__(text)
        self.field = field
        self.not_found = not_found


@dataclass(frozen=True, slots=True)
class StaffIdentity:
    """A staff member as a sender: their login, their From mailbox and their signature."""

    login: Login
    sender: Mailbox
    signature_text: str
    signature_html: str


def staff_identity(
    session: DBSession, tenant: Tenant, username: str, from_address: str | None = None
) -> StaffIdentity:
    """The sending identity of the tenant's staff member ``username``, From ``from_address``
    (default: their primary address).

    The relay rule (DESIGN §4) decides, as for a submission: the From must be one of their own
    verified addresses (checked again when the message is sent). Mail the CRM composes adds one
    more: it goes out as a verified customer domain of the tenant only, the domains its DKIM
    keys sign for. Another tenant's staff member is not found (``not_found``).
    """
    try:
        staff = find_staff(session, tenant, username)
    except DirectoryError as exc:
        raise SenderError("staff", str(exc), not_found=True) from exc
    if tenant.disabled_at is not None or staff.disabled_at is not None:
        who = (
            f"tenant {tenant.name!r}" if tenant.disabled_at else f"staff member {staff.username!r}"
        )
        raise SenderError("staff", f"{who} is disabled: enable it to send")
    login = login_for(session, staff, tenant)
    try:
        sender = parse_address(from_address or staff.primary_address)
    except AddressError as exc:
        raise SenderError("from", str(exc)) from exc
    field = "from" if from_address else "staff"
    owned = session.scalars(
        select(CustomerDomain.domain).where(
            CustomerDomain.tenant_id == tenant.id,
            CustomerDomain.domain == sender.domain,
            CustomerDomain.verified.is_(True),
        )
    ).first()
    if owned is None:
        raise SenderError(
            field,
            f"{sender.address}: {sender.domain} is not a verified customer domain of tenant "
            f"{tenant.name!r}; mail is sent only as a domain the tenant owns",
        )
    if not owns(login, sender):
        raise SenderError(field, f"{sender.address} is not an address of {login.username}")
    named = Mailbox(name=staff.name, local=sender.local, domain=sender.domain)
    return StaffIdentity(login, named, staff.signature_text, staff.signature_html)
