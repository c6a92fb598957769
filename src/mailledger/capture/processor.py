"""Processing one stored message: named steps, each leaving a trace of what it decided and why.

Runs inside one database transaction, so a crash part-way leaves no half-recorded activity:
the message stays ``received`` and is processed again (DESIGN §3). Every outcome is either an
activity (new, or merged into the same email's activity) or a quarantine with its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstrumentedAttribute, Session

from mailledger.config import Settings
from mailledger.forwarding import handback
from mailledger.forwarding.confirmations import (
    GMAIL_CONFIRMATION_SENDER,
    GMAIL_SIGNING_DOMAIN,
    extract_gmail_confirmation,
)
from mailledger.mail.addresses import Mailbox, normalize
from mailledger.mail.automated import automated_reason
from mailledger.mail.parsing import ParsedMessage, ParseFailure, parse_message
from mailledger.routing import dedupe
from mailledger.routing.matcher import Match, company_owners, match_parties, never_log_hits
from mailledger.store.blobs import BlobStore
from mailledger.store.engine import is_postgres
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Contact,
    ContactAddress,
    CustomerDomain,
    Direction,
    ForwardingConfirmation,
    MessageRoute,
    MessageState,
    OutboundMessage,
    Participant,
    PartyKind,
    ReceivedMessage,
    RouteKind,
    SenderCount,
    Staff,
    StaffAddress,
    Tenant,
    Thread,
    TraceEntry,
    utcnow,
)
from mailledger.verify.authenticate import Authenticator
from mailledger.verify.messageauth import DEMO, MessageAuth
from mailledger.verify.results import TEMPERROR, AuthOutcome
from mailledger.verify.trust import (
    Forward,
    TrustDecision,
    TrustPolicy,
    decide_log_capture,
    decide_user_capture,
)

RECORDED = "recorded"
CONFIRMATION = "forwarding-confirmation"
FORWARDING_CHECK = "forwarding-check"


def _oldest_activity_by(key: InstrumentedAttribute[str]) -> Select[int]:
    """The tenant's oldest activity whose ``key`` column equals ``value``."""
    return (
        select(Activity.id)
        .where(Activity.tenant_id == bindparam("tenant_id"), key == bindparam("value"))
        .order_by(Activity.id)
        .limit(1)
    )


# Statements built once: building one costs more than running it on SQLite.
_BY_DEDUPE_KEY = _oldest_activity_by(Activity.dedupe_key)
_BY_CONTENT_KEY = _oldest_activity_by(Activity.content_key)
_PARTICIPANTS_OF = select(Participant.role, Participant.address).where(
    Participant.activity_id == bindparam("activity_id")
)
_THREAD_BY_MESSAGE_IDS = (
    select(Activity.thread_id)
    .where(
        Activity.tenant_id == bindparam("tenant_id"),
        Activity.message_id.in_(bindparam("ids", expanding=True)),
        Activity.thread_id.is_not(None),
    )
    .limit(1)
)
_THREAD_BY_SUBJECT = (
    select(Thread.id)
    .where(
        Thread.tenant_id == bindparam("tenant_id"),
        Thread.subject_key == bindparam("subject_key"),
        Thread.parties_key == bindparam("parties_key"),
    )
    .order_by(Thread.id.desc())
    .limit(1)
)
_NEW_THREAD = insert(Thread).returning(Thread.id)
# Run on the connection, not the session: the ORM's bulk insert costs more than the insert.
_INSERT_TRACE = insert(TraceEntry)
_INSERT_SOURCE = insert(ActivitySource)
_INSERT_ATTACHMENT = insert(Attachment)
_INSERT_PARTICIPANT = insert(Participant)
_NEW_ACTIVITY = insert(Activity).returning(Activity.id)
_VERIFIED_DOMAINS = select(CustomerDomain.domain).where(
    CustomerDomain.tenant_id == bindparam("tenant_id"), CustomerDomain.verified.is_(True)
)
_VERIFIED_ADDRESSES = select(StaffAddress.address).where(
    StaffAddress.staff_id == bindparam("staff_id"), StaffAddress.verified.is_(True)
)
_SENDER_COUNT = select(SenderCount.count).where(
    SenderCount.tenant_id == bindparam("tenant_id"),
    SenderCount.sender == bindparam("sender"),
    SenderCount.bucket == bindparam("bucket"),
)


def _count_sender(insert_for: Any) -> Any:
    """One statement that adds one to a sender's bucket, creating it, and returns the count."""
    statement = insert_for(SenderCount).values(
        tenant_id=bindparam("tenant_id"),
        sender=bindparam("sender"),
        bucket=bindparam("bucket"),
        count=bindparam("count"),
    )
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "sender", "bucket"],
        set_={"count": SenderCount.count + 1},
    ).returning(SenderCount.count)


_COUNT_SENDER_SQLITE = _count_sender(sqlite.insert)
_COUNT_SENDER_POSTGRES = _count_sender(postgresql.insert)


@dataclass(frozen=True, slots=True)
class Party:
    """One address of the email in one role, normalized for the tenant."""

    role: str
    mailbox: Mailbox
    key: str


class Quarantine(Exception):  # noqa: N818 - it is a decision, not a fault
    """A route's copy is kept aside; the text is the reason users and operators see."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What was worked out before the write transaction: the bytes, their parse, our checks.

    Parsing, the sender checks (which wait on DNS) and writing the stamped copy inside the
    transaction held SQLite's one write lock while intake's commits waited; the worker does
    them first (``prepare``, then ``Worker._prepare``).
    """

    raw: bytes
    parsed: ParsedMessage | None
    failure: str = ""  # why the message could not be parsed, when parsed is None
    checked: AuthOutcome | None = None  # our own verdicts, when they were needed
    stamped: str | None = None  # blob of the copy with those verdicts on top


# Messages larger than this are parsed from their file, then read whole.
PARSE_FROM_FILE_BYTES = 1024 * 1024


def prepare(blobs: BlobStore, blob: str, received_at: datetime, settings: Settings) -> Prepared:
    """Read and parse a stored message, outside any transaction.

    A large message is parsed from its file and only then read into memory: at its peak the
    parser holds the text and its lines, and the bytes need not be there beside them (about
    10 MB less at the peak for a 10 MB message).
    """
    with blobs.open(blob) as stream:
        large = os.fstat(stream.fileno()).st_size > PARSE_FROM_FILE_BYTES
        raw = b"" if large else stream.read()
        try:
            parsed, failure = _parse_raw(stream if large else raw, received_at, settings), ""
        except Quarantine as exc:
            parsed, failure = None, str(exc)
        if large:
            stream.seek(0)
            raw = stream.read()
    return Prepared(raw, parsed, failure)


class RetryLater(Exception):  # noqa: N818 - a decision to wait, not a fault
    """A check failed temporarily (DNS): process the message again later instead of deciding."""


class Tracer:
    """Collects a message's trace entries, in order, and writes them in one statement.

    Added as ORM objects they cost a flush each time a later query autoflushed (about a
    third of processing's CPU, found by `make bench`); ``write`` inserts them all at once.
    """

    def __init__(self, session: Session, message: ReceivedMessage) -> None:
        self._session = session
        self._message = message
        self._rows: list[dict[str, object]] = []

    def __call__(self, step: str, decision: str, detail: str = "") -> None:
        self._rows.append(
            {
                "message_id": self._message.id,
                "at": utcnow(),
                "step": step,
                "decision": decision,
                "detail": detail[:2000],
            }
        )

    def write(self) -> None:
        """Insert what was collected; the caller's transaction commits it with the rest."""
        if self._rows:
            self._session.connection().execute(_INSERT_TRACE, self._rows)
            self._rows = []


def process_message(
    session: Session,
    blobs: BlobStore,
    message: ReceivedMessage,
    settings: Settings,
    authenticator: Authenticator,
    *,
    final_attempt: bool = True,
    prepared: Prepared | None = None,
) -> None:
    """Decide every route of one received message and set its final state and reason.

    Raises RetryLater when a check failed temporarily and this is not the last attempt; the
    caller rolls back and tries again later.
    """
    trace = Tracer(session, message)
    # Explicit flushes only: an autoflush before each lookup wrote the message row again and
    # again. What a lookup must see (a new activity, a new contact) is flushed where made.
    with session.no_autoflush:
        _decide(
            session,
            blobs,
            message,
            settings,
            authenticator,
            trace=trace,
            final_attempt=final_attempt,
            prepared=prepared or prepare(blobs, message.blob, message.received_at, settings),
        )
    trace.write()


def _decide(
    session: Session,
    blobs: BlobStore,
    message: ReceivedMessage,
    settings: Settings,
    authenticator: Authenticator,
    *,
    trace: Tracer,
    final_attempt: bool,
    prepared: Prepared,
) -> None:
    outcomes: list[str] = []
    raw = prepared.raw
    try:
        parsed = _parsed(message, prepared, trace)
        sender = _sender(parsed)
    except Quarantine as exc:
        trace("quarantine", "quarantined", str(exc))
        for route in message.routes:
            route.outcome = str(exc)
        _finish(message, MessageState.QUARANTINED, str(exc))
        return
    auth = MessageAuth(
        authenticator,
        settings,
        blobs=blobs,
        message=message,
        raw=raw,
        parsed=parsed,
        checked=prepared.checked,
        stamped=prepared.stamped,
    )
    step = RouteStep(session, blobs, settings, message, parsed, sender, trace, auth, final_attempt)
    for route in message.routes:
        try:
            activity = step.run(route)
        except Quarantine as exc:
            route.outcome = str(exc)
            trace("quarantine", "quarantined", f"{route.rcpt}: {exc}")
            outcomes.append(str(exc))
            continue
        if activity is None:
            route.outcome = route.outcome or CONFIRMATION
            continue
        route.outcome = RECORDED
        route.activity_id = activity
    if any(route.outcome in (RECORDED, CONFIRMATION, FORWARDING_CHECK) for route in message.routes):
        _finish(message, MessageState.PROCESSED, "; ".join(dict.fromkeys(outcomes)))
    else:
        _finish(message, MessageState.QUARANTINED, "; ".join(dict.fromkeys(outcomes)))


def _finish(message: ReceivedMessage, state: MessageState, reason: str) -> None:
    message.state = state
    message.reason = reason
    message.finished_at = utcnow()
    message.claimed_by = None
    message.claim_expires_at = None


def _parse_raw(raw: bytes | BinaryIO, received_at: datetime, settings: Settings) -> ParsedMessage:
    try:
        parsed = parse_message(
            raw,
            received_at=received_at,
            max_depth=settings.capture.max_mime_depth,
            max_parts=settings.capture.max_mime_parts,
        )
    except ParseFailure as exc:
        raise Quarantine(str(exc)) from exc
    except (ValueError, LookupError, UnicodeError, AttributeError, TypeError) as exc:
        # The email package is lenient, but garbage MIME can still trip it; keep the message.
        raise Quarantine(f"unparseable: {type(exc).__name__}") from exc
    return parsed


def _parsed(message: ReceivedMessage, prepared: Prepared, trace: Tracer) -> ParsedMessage:
    parsed = prepared.parsed
    if parsed is None:
        raise Quarantine(prepared.failure)
    message.message_id = parsed.message_id[:998]
    trace(
        "parse",
        "parsed",
        f"message-id=<{parsed.message_id}> subject={parsed.subject[:80]!r} "
        f"{len(parsed.body.attachments)} attachment(s)",
    )
    return parsed


def _sender(parsed: ParsedMessage) -> Mailbox:
    """The single From mailbox; anything else is ambiguous and quarantined (DESIGN §4)."""
    sender = parsed.sender
    if sender is not None:
        return sender
    if parsed.from_fields == 0:
        raise Quarantine("ambiguous-from: no From header")
    if parsed.from_fields > 1:
        raise Quarantine(f"ambiguous-from: {parsed.from_fields} From headers")
    if parsed.from_list.invalid:
        raise Quarantine(f"ambiguous-from: unparseable From {parsed.from_list.invalid[0][:80]!r}")
    if not parsed.from_list.mailboxes:
        raise Quarantine("ambiguous-from: From holds no mailbox")
    raise Quarantine(f"ambiguous-from: From holds {len(parsed.from_list.mailboxes)} mailboxes")


def _parties(parsed: ParsedMessage, sender: Mailbox, tenant: Tenant) -> list[Party]:
    """From, To and Cc, normalized, without the tenant's own capture addresses."""
    seen: set[tuple[str, str]] = set()
    parties = []
    for role, boxes in (("from", (sender,)), ("to", parsed.to), ("cc", parsed.cc)):
        for box in boxes:
            if box.domain == tenant.capture_domain:
                continue
            key = normalize(box, strip_plus=tenant.strip_plus_tags)
            if (role, key) in seen:
                continue
            seen.add((role, key))
            parties.append(Party(role, box, key))
    return parties


@dataclass(slots=True)
class RouteStep:
    """The context one route's copy is decided in: the message, its parse, and the stores."""

    session: Session
    blobs: BlobStore
    settings: Settings
    message: ReceivedMessage
    parsed: ParsedMessage
    sender: Mailbox
    trace: Tracer
    auth: MessageAuth
    final_attempt: bool

    def run(self, route: MessageRoute) -> int | None:
        """Special mail, automation, trust, match, policy, then record or merge.

        Returns the activity's id, or None when the copy was handled without an activity (a
        forwarding confirmation); raises Quarantine with the reason when it is kept aside.
        """
        session, trace = self.session, self.trace
        force = self.message.force_record
        tenant = session.get_one(Tenant, route.tenant_id)
        if self._screen(route, tenant, force):
            return None
        trace("automated", "person", "no auto-reply, bulk, bounce or loop markers")

        parties = _parties(self.parsed, self.sender, tenant)
        matches = match_parties(session, tenant, [p.key for p in parties])
        sender_key = parties[0].key
        sender_match = matches[sender_key]
        trace(
            "match",
            "matched",
            ", ".join(f"{p.role} {p.key}={matches[p.key].kind.value}" for p in parties),
        )

        if route.kind is RouteKind.LOG and sender_match.kind is not PartyKind.STAFF:
            raise Quarantine(f"log-not-staff: From {sender_key} is not a staff member's address")
        trust = self._trust(route, tenant, sender_key)
        self.message.auth = trust.auth
        trace("trust", trust.verdict, f"{route.rcpt}: {trust.reason}")
        if not trust.accept:
            if _temporary(trust) and not self.final_attempt:
                raise RetryLater(trust.reason)
            if not force:
                raise Quarantine(f"untrusted: {trust.reason}")
            trace("trust", "overridden", "released by the operator with --force")
        outbound = sender_match.kind is PartyKind.STAFF
        direction = Direction.OUTBOUND if outbound else Direction.INBOUND
        owner = route.staff_id if route.kind is RouteKind.USER else sender_match.staff_id

        external = [p for p in parties if matches[p.key].kind is not PartyKind.STAFF]
        staff_ids = {m.staff_id for m in matches.values() if m.staff_id is not None}
        if owner is not None:
            staff_ids.add(owner)
        hits = never_log_hits(session, tenant, staff_ids, [p.key for p in external])
        if hits and not force:
            raise Quarantine(f"never-log: {', '.join(hits)}")

        if not external and not (tenant.record_internal or force):
            raise Quarantine("internal: every party is staff")
        self._require_known(tenant, direction, external, matches)

        if not force:
            _loop_guard(session, tenant, sender_key, self.settings)

        activity, merged = self._record(
            route, tenant, trust, [p.key for p in external], direction=direction, owner=owner
        )
        if merged:
            trace("record", "merged", f"merged into activity {activity} (source {route.rcpt})")
        else:
            trace("record", "captured", f"activity {activity} ({direction.value})")
        _add_participants(session, activity, parties, matches, merged=merged)
        _link_relayed(session, self.message, activity)
        return activity

    def _screen(self, route: MessageRoute, tenant: Tenant, force: bool) -> bool:
        """Set aside what is not client correspondence: role addresses, loops, robots.

        Returns True when the copy was handled without an activity (forwarding set-up mail).
        """
        if route.kind is RouteKind.OPERATOR:
            raise Quarantine(f"operator: mail for {route.rcpt}, kept for the operator to read")
        if self.sender.domain == tenant.capture_domain:
            # Nobody writes from a capture address: a loop, or a forgery.
            raise Quarantine(f"loop: From {self.sender.address} is a capture address")
        if route.kind is RouteKind.USER and self._forwarding_setup(route, tenant):
            return True
        if not force:
            reason = automated_reason(
                self.parsed.headers,
                self.message.mail_from,
                self.parsed.message_id,
                self.settings.service.hostname,
            )
            if reason is not None:
                raise Quarantine(reason)
        return False

    def _trust(self, route: MessageRoute, tenant: Tenant, sender_key: str) -> TrustDecision:
        """Apply the trust rule for the route's kind to the verdicts that hold for its tenant."""
        if self.message.submitted_by_staff_id is not None and route.kind is RouteKind.LOG:
            return self._submitted(sender_key)
        auth, source = self.auth.for_tenant(tenant)
        if source == DEMO:
            summary = auth.summary() | {"trust": "demo-loopback"}
            reason = "DEMO ONLY: loopback trusted as an authenticated forwarder"
            return TrustDecision(True, "demo-loopback", reason, summary)
        connection = self.session.connection()
        domains = connection.execute(_VERIFIED_DOMAINS, {"tenant_id": tenant.id}).scalars()
        policy = TrustPolicy(
            tenant_domains=frozenset(domains),
            trusted_sealers=frozenset(s.lower() for s in self.settings.verify.trusted_arc_sealers),
        )
        if route.kind is RouteKind.LOG:
            return decide_log_capture(auth, sender_key, self.message.mail_from, policy)
        own = connection.execute(_VERIFIED_ADDRESSES, {"staff_id": route.staff_id}).scalars()
        headers = self.parsed.headers
        forwarded = tuple(
            " ".join(value.split()).lower()
            for name in ("x-forwarded-to", "x-forwarded-for")
            for value in headers.get(name, [])
        )
        forward = Forward(route.rcpt, self.message.mail_from, frozenset(own), forwarded)
        return decide_user_capture(auth, forward, policy)

    def _submitted(self, sender_key: str) -> TrustDecision:
        """Sent through our relay after SMTP AUTH: the login vouches, if the From is theirs.

        The relay refused any other From already (``relay.ownership``); checking again here
        keeps a stored message from a deleted or changed login out of the record.
        """
        staff = self.session.get(Staff, self.message.submitted_by_staff_id)
        own = self.session.scalars(
            select(StaffAddress.address).where(
                StaffAddress.staff_id == self.message.submitted_by_staff_id,
                StaffAddress.verified.is_(True),
            )
        )
        login = staff.username if staff is not None else "a removed staff member"
        auth = {"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none"}
        if staff is None or sender_key not in set(own):
            reason = f"submission by {login}: From {sender_key} is not their address"
            return TrustDecision(False, "untrusted", reason, auth | {"trust": "untrusted"})
        reason = f"submission: authenticated as {login}"
        return TrustDecision(True, "submission", reason, auth | {"trust": "submission"})

    def _forwarding_setup(self, route: MessageRoute, tenant: Tenant) -> bool:
        """Gmail's confirmation or our own check coming back: handled, not recorded."""
        if normalize(self.sender) == GMAIL_CONFIRMATION_SENDER:
            self._forwarding_confirmation(route, tenant)
            return True
        token = handback.challenge_token(self.parsed.headers)
        if token and self._forwarding_check(route, tenant, token):
            route.outcome = FORWARDING_CHECK
            return True
        return False

    def _forwarding_check(self, route: MessageRoute, tenant: Tenant, token: str) -> bool:
        """Our forwarding-check challenge coming back: prove the staff member's forwarding."""
        auth, _ = self.auth.for_tenant(tenant)
        assert route.staff_id is not None
        verdict = handback.prove_forwarding(
            self.session,
            self.message,
            staff_id=route.staff_id,
            capture=route.rcpt,
            token=token,
            auth=auth,
        )
        if verdict == handback.UNKNOWN:
            return False  # not a check of this staff member: ordinary mail
        if verdict == handback.EXPIRED:
            raise Quarantine("forwarding-check: the challenge had expired")
        self.message.auth = auth.summary()
        self.trace("forwarding", "check", f"forwarding check for {route.rcpt}: {verdict}")
        return True

    def _forwarding_confirmation(self, route: MessageRoute, tenant: Tenant) -> None:
        """Keep Gmail's code for the staff member; only Google itself may send one."""
        auth, source = self.auth.for_tenant(tenant)
        signed = any(r.trusted_pass and r.domain == GMAIL_SIGNING_DOMAIN for r in auth.dkim)
        if not signed and source != DEMO:
            if _outcome_temporary(auth) and not self.final_attempt:
                raise RetryLater("forwarding confirmation: DKIM check failed temporarily")
            raise Quarantine(
                f"forged-confirmation: {GMAIL_CONFIRMATION_SENDER} without dkim=pass "
                f"d={GMAIL_SIGNING_DOMAIN}"
            )
        staff = self.session.get_one(Staff, route.staff_id)
        found = extract_gmail_confirmation(self.parsed.subject, self.parsed.body.text, route.rcpt)
        self.session.add(
            ForwardingConfirmation(
                tenant_id=tenant.id,
                staff_id=staff.id,
                message_id=self.message.id,
                provider="gmail",
                code=found.code,
                link=found.link,
                requested_by=found.requested_by,
            )
        )
        self.message.auth = auth.summary()
        self.trace(
            "forwarding",
            "confirmation",
            f"Gmail forwarding confirmation (code {found.code or 'not found'}) requested by "
            f"{found.requested_by or 'unknown'}; held for hand-back to {staff.primary_address}",
        )

    def _require_known(
        self,
        tenant: Tenant,
        direction: Direction,
        external: list[Party],
        matches: dict[str, Match],
    ) -> None:
        """Inbound needs a known sender, outbound a known recipient, unless created."""
        if direction is Direction.INBOUND:
            candidates = [p for p in external if p.role == "from"]
        else:
            candidates = external
        if not candidates:
            return
        if tenant.create_unknown_contacts:
            # Known only by their company's domain, or not at all: they become contacts.
            for party in candidates:
                if matches[party.key].kind in (PartyKind.UNMATCHED, PartyKind.COMPANY):
                    matches[party.key] = _create_contact(self.session, tenant, party)
                    self.trace("contact", "created", f"{party.key} added as a contact")
            return
        if any(matches[p.key].kind is not PartyKind.UNMATCHED for p in candidates):
            return
        if self.message.force_record:
            return
        label = "unknown-sender" if direction is Direction.INBOUND else "unknown-recipients"
        names = ", ".join(p.key for p in candidates)
        raise Quarantine(f"{label}: {names} not a contact or company")

    def _record(
        self,
        route: MessageRoute,
        tenant: Tenant,
        trust: TrustDecision,
        external_keys: list[str],
        *,
        direction: Direction,
        owner: int | None,
    ) -> tuple[int, bool]:
        """Find the same email's activity (Message-ID, then checksum) or create it."""
        session, parsed = self.session, self.parsed
        checksum = dedupe.content_key(parsed)
        key = dedupe.message_id_key(parsed.message_id) if parsed.message_id else checksum
        # Two lookups, each on its own index, then the older match: with one OR query SQLite
        # searched (tenant_id, content_key) on tenant_id alone, every activity of the tenant
        # per message (found by `make bench`: processing slowed as the tenant grew). Ids only:
        # the whole activity is loaded when there is one to merge into, which is rare.
        connection = session.connection()
        found = [
            connection.execute(
                lookup, {"tenant_id": tenant.id, "value": value}
            ).scalar_one_or_none()
            for lookup, value in ((_BY_DEDUPE_KEY, key), (_BY_CONTENT_KEY, checksum))
        ]
        existing = min((a for a in found if a is not None), default=None)
        activity = existing
        if activity is None:
            activity = self._new_activity(
                tenant, trust, key, checksum, external_keys, direction=direction, owner=owner
            )
        connection.execute(
            _INSERT_SOURCE,
            [
                {
                    "activity_id": activity,
                    "message_id": self.message.id,
                    "route_id": route.id,
                    "kind": route.kind,
                    "staff_id": route.staff_id,
                }
            ],
        )
        self.message.auth = trust.auth
        return activity, existing is not None

    def _new_activity(
        self,
        tenant: Tenant,
        trust: TrustDecision,
        key: str,
        checksum: str,
        external_keys: list[str],
        *,
        direction: Direction,
        owner: int | None,
    ) -> int:
        """Insert the activity and its attachments; returns the activity's id."""
        parsed, sender = self.parsed, self.sender
        subject_lower = parsed.subject.lower()
        keywords = self.settings.processing.privacy_keywords
        connection = self.session.connection()
        activity = connection.execute(
            _NEW_ACTIVITY,
            {
                "tenant_id": tenant.id,
                "dedupe_key": key,
                "content_key": checksum,
                "direction": direction,
                "staff_id": owner,
                "thread_id": _thread_for(connection, tenant, parsed, external_keys),
                "subject": parsed.subject,
                "from_address": sender.address,
                "from_name": sender.name[:200],
                "message_id": parsed.message_id[:998],
                "in_reply_to": " ".join(parsed.in_reply_to),
                "references": " ".join(parsed.references),
                "occurred_at": parsed.date or self.message.received_at,
                "text_body": parsed.body.text,
                "html_body": parsed.body.html,
                "private": any(word.lower() in subject_lower for word in keywords),
                "auth": dict(trust.auth),
                "raw_blob": self.auth.stored_copy(),
            },
        ).scalar_one()
        attachments = [
            {
                "activity_id": activity,
                "filename": part.filename,
                "content_type": part.content_type[:255],
                "size": part.size,
                "blob": self.blobs.put_pieces(part.pieces),
                "content_id": part.content_id[:255],
                "inline": part.inline,
            }
            for part in parsed.body.parts
        ]
        if attachments:
            connection.execute(_INSERT_ATTACHMENT, attachments)
        return int(activity)


def _outcome_temporary(auth: AuthOutcome) -> bool:
    words = {auth.spf.result, auth.arc.result, auth.dmarc.result}
    words.update(r.result for r in auth.dkim)
    return TEMPERROR in words


def _temporary(trust: TrustDecision) -> bool:
    """Whether a refusal rests on a check that failed temporarily (DNS), not on a verdict."""
    auth = trust.auth
    words = {auth.get("spf"), auth.get("arc"), auth.get("dmarc"), auth.get("dkim")}
    return TEMPERROR in words


def _link_relayed(session: Session, message: ReceivedMessage, activity: int) -> None:
    """Point the relay's queued copies of a submitted message at its activity."""
    if message.submitted_by_staff_id is None:
        return
    # The relayed copies share the submitted message's queue id.
    session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.queue_id == message.queue_id)
        .values(activity_id=activity)
        .execution_options(synchronize_session=False)
    )


def _create_contact(session: Session, tenant: Tenant, party: Party) -> Match:
    owners = company_owners(session, tenant, {party.mailbox.domain})
    company_id = owners.get(party.mailbox.domain)
    contact = Contact(tenant_id=tenant.id, name=party.mailbox.name[:200], company_id=company_id)
    session.add(contact)
    session.flush()
    session.add(ContactAddress(contact_id=contact.id, tenant_id=tenant.id, address=party.key))
    session.flush()
    return Match(party.key, PartyKind.CONTACT, contact_id=contact.id, company_id=company_id)


def _loop_guard(session: Session, tenant: Tenant, sender: str, settings: Settings) -> None:
    """Count messages per sender; past the threshold within a window it is a loop or a flood.

    Counts live in buckets one window long; the current and the previous bucket are added up,
    so a burst that straddles a bucket boundary is still seen.
    """
    window = settings.processing.loop_window_seconds
    bucket = int(utcnow().timestamp() // window)
    connection = session.connection()
    key = {"tenant_id": tenant.id, "sender": sender}
    upsert = _COUNT_SENDER_POSTGRES if is_postgres(connection.engine) else _COUNT_SENDER_SQLITE
    current = connection.execute(upsert, key | {"bucket": bucket, "count": 1}).scalar_one()
    previous = connection.execute(_SENDER_COUNT, key | {"bucket": bucket - 1}).scalar()
    total = current + (previous or 0)
    if total > settings.processing.loop_threshold:
        raise Quarantine(
            f"loop: more than {settings.processing.loop_threshold} messages from {sender} "
            f"within {window:g} s"
        )


def _thread_for(
    connection: Connection, tenant: Tenant, parsed: ParsedMessage, external_keys: list[str]
) -> int:
    """In-Reply-To/References first, then the normalized subject with the same parties."""
    ids = [*parsed.in_reply_to, *parsed.references]
    if ids:
        thread_id = connection.execute(
            _THREAD_BY_MESSAGE_IDS, {"tenant_id": tenant.id, "ids": ids}
        ).scalar()
        if thread_id is not None:
            return int(thread_id)
    subject = dedupe.subject_key(parsed.subject)
    parties = dedupe.parties_key(external_keys)
    key = {"tenant_id": tenant.id, "subject_key": subject[:998], "parties_key": parties}
    if subject:
        existing = connection.execute(_THREAD_BY_SUBJECT, key).scalar()
        if existing is not None:
            return int(existing)
    return int(connection.execute(_NEW_THREAD, key).scalar_one())


def _add_participants(
    session: Session,
    activity: int,
    parties: list[Party],
    matches: dict[str, Match],
    *,
    merged: bool,
) -> None:
    """Add each party once per role; a merged path may name parties the first one did not."""
    have: set[tuple[str, str]] = set()
    if merged:
        have = {
            (role, address)
            for role, address in session.connection().execute(
                _PARTICIPANTS_OF, {"activity_id": activity}
            )
        }
    rows = []
    for party in parties:
        if (party.role, party.key) in have:
            continue
        match = matches[party.key]
        rows.append(
            {
                "activity_id": activity,
                "role": party.role,
                "address": party.key,
                "name": party.mailbox.name[:200],
                "kind": match.kind,
                "staff_id": match.staff_id,
                "contact_id": match.contact_id,
                "company_id": match.company_id,
            }
        )
        have.add((party.role, party.key))
    if rows:
        session.connection().execute(_INSERT_PARTICIPANT, rows)
