"""Forwarding health: does a forward that was proven still work?

A forward stops without a word: Gmail drops the forwarding address when the password changes,
a Microsoft 365 admin policy blocks external forwarding (``550 5.7.520``, bounced to the
sender, never to the staff member). Nobody notices for weeks. For every staff member whose
forwarding was proven by the round-trip check (``handback``), one pass:

- **rechecks** every ``[forwarding] recheck_days``: a new round-trip check goes out; one that
  has not come back within ``deadline_hours`` (and no other forwarded mail came meanwhile) makes
  forwarding **broken** since the check was sent (reason ``no-return``);
- watches for **silence**: no forwarded mail for ``silence_days`` while the staff member is seen
  working (outbound activities, relay submissions) is **broken** since the last forwarded mail
  (reason ``silence``). Someone who sends nothing is on holiday, not broken;
- mails the staff member the fix for their provider when forwarding turns broken, once per
  breakage (``ForwardingHealth.notified_at``);
- turns it back to **proven** on any later proof: a check coming back (``prove_forwarding``
  does that at once), or forwarded mail arriving after the breakage began.

The rules are :func:`assess`, a function of the facts and the clock, so they are tested without
a server; :func:`run_pass` reads the facts, applies the verdicts, sends the checks and mails.
It runs under the ``forwarding-health`` periodic lease (``store.periodic``): with several nodes,
one runs each pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from mailledger.config import ForwardingSettings, Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.systemmail import queue_system_mail
from mailledger.forwarding import handback
from mailledger.forwarding.fixes import PROVIDER_NAMES, fix_steps, provider_of
from mailledger.logs import get_logger
from mailledger.mail.addresses import capture_address
from mailledger.store import periodic
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.models import (
    Activity,
    Direction,
    ForwardingCheck,
    ForwardingHealth,
    MessageRoute,
    ReceivedMessage,
    RouteKind,
    Staff,
    Tenant,
    utcnow,
)

log = get_logger(__name__)

PROVEN: Final = handback.PROVEN
BROKEN: Final = handback.BROKEN
NO_RETURN: Final = "no-return"
SILENCE: Final = "silence"

JOB: Final = "forwarding-health"
# A pass holds the job this long at most; a node that dies mid-pass is taken over after it.
PASS_LEASE: Final = timedelta(minutes=15)

# Route outcomes of mail that came through the staff member's forward (capture/pipeline:
# decisions.py and policy.py): recorded, our check back (in time or late), or kept out of the
# record by a policy applied after the trust step passed. Untrusted or automated mail, which
# anyone can send to a capture address, proves nothing.
FORWARDED_OUTCOMES: Final = ("recorded", "forwarding-check")
FORWARDED_REASON_PREFIXES: Final = (
    "forwarding-check:",
    "never-log:",
    "internal:",
    "unknown-sender:",
    "unknown-recipients:",
)


@dataclass(frozen=True, slots=True)
class Policy:
    """``[forwarding]`` as durations; ``None`` turns a rule off."""

    recheck: timedelta | None
    deadline: timedelta
    silence: timedelta | None

    @classmethod
    def from_settings(cls, settings: ForwardingSettings) -> Policy:
        """The policy the configuration asks for."""
        return cls(
            recheck=timedelta(days=settings.recheck_days) if settings.recheck_days else None,
            deadline=timedelta(hours=settings.deadline_hours),
            silence=timedelta(days=settings.silence_days) if settings.silence_days else None,
        )


@dataclass(frozen=True, slots=True)
class Facts:
    """What the store says about one proven staff member's forwarding."""

    last_proof: datetime  # the latest check that came back
    last_check_sent: datetime  # the latest check sent, proven or not
    last_check_proven: bool
    last_forwarded: datetime | None  # the latest mail that came through the forward
    sent_recently: int  # mail they sent within the silence window (0 when not counted)
    state: str | None = None  # the health row's, if any
    since: datetime | None = None
    reason: str = ""
    detail: str = ""

    @property
    def last_evidence(self) -> datetime:
        """When the forward was last seen working."""
        if self.last_forwarded is None:
            return self.last_proof
        return max(self.last_proof, self.last_forwarded)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdict of one pass for one staff member."""

    state: str
    since: datetime
    reason: str = ""
    detail: str = ""
    send_check: bool = False


def _at(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def silent(facts: Facts, policy: Policy, now: datetime) -> bool:
    """Whether the forward has been quiet for the whole silence window."""
    return policy.silence is not None and now - facts.last_evidence >= policy.silence


def assess(facts: Facts, policy: Policy, now: datetime, *, primary: str = "") -> Assessment:
    """Proven or broken, since when and why, and whether a check should go out now."""
    evidence = facts.last_evidence
    open_check = not facts.last_check_proven and now < facts.last_check_sent + policy.deadline
    due = policy.recheck is not None and now - facts.last_check_sent >= policy.recheck
    if facts.state == BROKEN and facts.since is not None:
        if evidence > facts.since:
            return Assessment(PROVEN, evidence, send_check=due)
        return Assessment(BROKEN, facts.since, facts.reason, facts.detail, send_check=due)
    unanswered = (
        not facts.last_check_proven
        and now >= facts.last_check_sent + policy.deadline
        and evidence <= facts.last_check_sent
    )
    if unanswered:
        hours = policy.deadline.total_seconds() / 3600
        detail = (
            f"the check mailed to {primary or 'your mailbox'} on {_at(facts.last_check_sent)} "
            f"did not come back through your forward within {hours:g} hours"
        )
        return Assessment(BROKEN, facts.last_check_sent, NO_RETURN, detail, send_check=due)
    if silent(facts, policy, now) and facts.sent_recently > 0:
        assert policy.silence is not None
        detail = (
            f"no forwarded mail since {_at(evidence)}, while you sent {facts.sent_recently} "
            f"message(s) in the last {policy.silence.days} day(s)"
        )
        # A check now: if the forward works after all, its return ends the alarm in minutes.
        return Assessment(BROKEN, evidence, SILENCE, detail, send_check=due or not open_check)
    since = facts.since if facts.state == PROVEN and facts.since is not None else facts.last_proof
    return Assessment(PROVEN, since, send_check=due)


# --- reading the facts ----------------------------------------------------------------------


def _forwarded(staff_id: int) -> list[ColumnElement[bool]]:
    outcome = or_(
        MessageRoute.outcome.in_(FORWARDED_OUTCOMES),
        *(MessageRoute.outcome.startswith(p) for p in FORWARDED_REASON_PREFIXES),
    )
    return [MessageRoute.staff_id == staff_id, MessageRoute.kind == RouteKind.USER, outcome]


def sent_since(session: Session, staff: Staff, start: datetime, now: datetime) -> int:
    """Mail the staff member sent in [start, now]: outbound activities and relay submissions."""
    activities = session.scalar(
        select(func.count())
        .select_from(Activity)
        .where(
            Activity.tenant_id == staff.tenant_id,
            Activity.staff_id == staff.id,
            Activity.direction == Direction.OUTBOUND,
            Activity.occurred_at >= start,
            Activity.occurred_at <= now,
        )
    )
    submitted = session.scalar(
        select(func.count())
        .select_from(ReceivedMessage)
        .where(
            ReceivedMessage.submitted_by_staff_id == staff.id,
            ReceivedMessage.received_at >= start,
            ReceivedMessage.received_at <= now,
        )
    )
    return int(activities or 0) + int(submitted or 0)


def read_facts(session: Session, staff: Staff, policy: Policy, now: datetime) -> Facts | None:
    """The facts about one staff member; ``None`` when their forwarding was never proven."""
    last_proof = session.scalar(
        select(func.max(ForwardingCheck.proven_at)).where(ForwardingCheck.staff_id == staff.id)
    )
    if last_proof is None:
        return None
    latest = session.scalars(
        select(ForwardingCheck)
        .where(ForwardingCheck.staff_id == staff.id)
        .order_by(ForwardingCheck.sent_at.desc(), ForwardingCheck.id.desc())
        .limit(1)
    ).one()
    last_forwarded = session.scalar(
        select(func.max(ReceivedMessage.received_at))
        .join(MessageRoute, MessageRoute.message_id == ReceivedMessage.id)
        .where(*_forwarded(staff.id))
    )
    health = session.scalars(
        select(ForwardingHealth).where(ForwardingHealth.staff_id == staff.id)
    ).first()
    facts = Facts(
        last_proof=last_proof,
        last_check_sent=latest.sent_at,
        last_check_proven=latest.proven_at is not None,
        last_forwarded=last_forwarded,
        sent_recently=0,
        state=health.state if health else None,
        since=health.since if health else None,
        reason=health.reason if health else "",
        detail=health.detail if health else "",
    )
    if policy.silence is not None and silent(facts, policy, now):
        # Counted only when it can matter: a quiet forward is rare, the count is a scan.
        sent = sent_since(session, staff, now - policy.silence, now)
        facts = replace(facts, sent_recently=sent)
    return facts


def monitored_staff(session: Session, tenant: Tenant | None = None) -> list[Staff]:
    """Active staff of active tenants with at least one proven check, by tenant and name."""
    proven = select(ForwardingCheck.staff_id).where(ForwardingCheck.proven_at.is_not(None))
    query = (
        select(Staff)
        .join(Tenant, Tenant.id == Staff.tenant_id)
        .where(
            Staff.disabled_at.is_(None),
            Staff.removed_at.is_(None),
            Tenant.disabled_at.is_(None),
            Staff.id.in_(proven),
        )
        .order_by(Tenant.name, Staff.username)
    )
    if tenant is not None:
        query = query.where(Staff.tenant_id == tenant.id)
    return list(session.scalars(query))


# --- applying the verdicts --------------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """What a pass did for one staff member (only members it did something for are listed)."""

    tenant: str
    username: str
    before: str  # proven or broken (proven the first time: only proven staff are watched)
    after: str
    since: datetime
    reason: str = ""
    detail: str = ""
    check_sent_to: str = ""
    mailed_to: str = ""

    def __str__(self) -> str:
        who = f"{self.tenant}/{self.username}"
        parts = []
        if self.before != self.after:
            state = f"broken since {_at(self.since)}" if self.after == BROKEN else "proven"
            parts.append(f"{self.before} -> {state}")
            if self.after == BROKEN:
                parts.append(f"({self.reason}: {self.detail})")
        if self.mailed_to:
            parts.append(f"; fix mailed to {self.mailed_to}")
        if self.check_sent_to:
            parts.append(f"; check sent to {self.check_sent_to}")
        return f"{who}: {' '.join(parts).replace(' ;', ';').lstrip('; ')}"

    def as_dict(self) -> dict[str, str]:
        """For ``--json``."""
        return {
            "tenant": self.tenant,
            "username": self.username,
            "before": self.before,
            "after": self.after,
            "since": self.since.isoformat(),
            "reason": self.reason,
            "detail": self.detail,
            "check_sent_to": self.check_sent_to,
            "mailed_to": self.mailed_to,
        }


@dataclass(slots=True)
class PassReport:
    """One pass: whether it ran (another node may hold it), and what changed."""

    ran: bool
    changes: list[Change] = field(default_factory=list)


def _locked_row(session: Session, staff_id: int) -> ForwardingHealth | None:
    """The staff member's health row, locked until the commit (PostgreSQL; SQLite's write
    transaction holds the whole database)."""
    return session.scalars(
        select(ForwardingHealth).where(ForwardingHealth.staff_id == staff_id).with_for_update()
    ).first()


def _as_seen(row: ForwardingHealth | None, seen: Facts) -> bool:
    """Whether the health row is as the facts saw it.

    The facts are read before the writing transaction. A check that came back meanwhile
    changed the row (processing marks the forward proven at once), and a verdict written
    then would put the breakage back and mail about it again. The row's lock keeps
    processing from slipping between this check and the write.
    """
    found = (row.state, row.since) if row is not None else (None, None)
    return found == (seen.state, seen.since)


def _record(
    session: Session,
    row: ForwardingHealth | None,
    staff_id: int,
    verdict: Assessment,
    now: datetime,
) -> bool:
    """Write the verdict into ``row`` (made when missing); whether the staff member is
    broken and not yet told."""
    if row is None:
        row = ForwardingHealth(staff_id=staff_id, state=verdict.state, since=verdict.since)
        session.add(row)
    if verdict.state == PROVEN:
        row.notified_at = None  # a new breakage is a new mail
    row.state, row.since = verdict.state, verdict.since
    row.reason, row.detail = verdict.reason, verdict.detail
    row.checked_at = now
    return row.state == BROKEN and row.notified_at is None


def breakage_subject(staff: Staff, tenant: Tenant) -> str:
    """The subject: which forward stopped."""
    capture = capture_address(staff.username, tenant.capture_domain)
    return f"Your mail forwarding to {capture} has stopped"


def breakage_text(
    staff: Staff, tenant: Tenant, verdict: Assessment, *, provider: str, page_url: str
) -> str:
    """The mail's text: since when the forward stopped, what we saw, and how to mend it."""
    capture = capture_address(staff.username, tenant.capture_domain)
    steps = "\n".join(f"{n}. {step}" for n, step in enumerate(fix_steps(provider, capture), 1))
    return (
        f"Mail forwarded from {staff.primary_address} to {capture} has stopped reaching\n"
        f"mailledger, so your client mail is not being recorded.\n\n"
        f"Broken since: {_at(verdict.since)}\n"
        f"What we saw: {verdict.detail}.\n\n"
        f"How to fix it ({PROVIDER_NAMES[provider]}):\n\n{steps}\n\n"
        f"Once it is fixed there is nothing else to do: the next forwarded mail, or the next\n"
        f"check we send, marks forwarding as working again. Your integrations page shows\n"
        f"the status: {page_url}\n"
    )


async def _mail_breakage(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    settings: Settings,
    resolver: Resolver,
    *,
    staff_id: int,
    verdict: Assessment,
    now: datetime,
) -> str:
    """Queue the breakage mail unless it went already; the address it went to, or ``""``."""
    with sessions() as session:
        staff = session.get_one(Staff, staff_id)
        tenant = session.get_one(Tenant, staff.tenant_id)
        observed = session.scalars(
            select(ForwardingCheck.observed)
            .where(ForwardingCheck.staff_id == staff_id, ForwardingCheck.proven_at.is_not(None))
            .order_by(ForwardingCheck.proven_at.desc())
            .limit(1)
        ).first()
        provider = provider_of(observed or {}, staff.primary_address)
        page = f"{settings.http.public_url}/integrations"
        subject = breakage_subject(staff, tenant)
        text = breakage_text(staff, tenant, verdict, provider=provider, page_url=page)
        tenant_id, rcpt = tenant.id, staff.primary_address

    def claim(session: Session) -> bool:
        # Claimed and queued in one transaction: one mail per breakage, whoever runs the pass.
        claimed = session.execute(
            update(ForwardingHealth)
            .where(
                ForwardingHealth.staff_id == staff_id,
                ForwardingHealth.state == BROKEN,
                ForwardingHealth.notified_at.is_(None),
            )
            .values(notified_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(claimed, "rowcount", 0) or 0) == 1

    queued = await queue_system_mail(
        sessions,
        resolver,
        blobs,
        settings,
        tenant_id=tenant_id,
        recipients=[(staff_id, rcpt)],
        subject=subject,
        body=text,
        claim=claim,
    )
    if not queued:
        return ""
    log.info("forwarding broken: fix mailed", staff=staff_id, to=rcpt, reason=verdict.reason)
    return rcpt


async def check_health(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    settings: Settings,
    resolver: Resolver,
    *,
    now: datetime,
    tenant_id: int | None = None,
) -> list[Change]:
    """One pass over every monitored staff member (of one tenant, if given); what changed."""
    policy = Policy.from_settings(settings.forwarding)
    with sessions() as session:
        tenant = session.get_one(Tenant, tenant_id) if tenant_id is not None else None
        found = []
        for staff in monitored_staff(session, tenant):
            facts = read_facts(session, staff, policy, now)
            if facts is not None:
                tenant_name = session.get_one(Tenant, staff.tenant_id).name
                found.append((staff.id, tenant_name, staff.username, staff.primary_address, facts))
    changes = []
    for staff_id, tenant_name, username, primary, facts in found:
        verdict = assess(facts, policy, now, primary=primary)
        with sessions.begin() as session:
            row = _locked_row(session, staff_id)
            if not _as_seen(row, facts):
                continue  # a check came back meanwhile: the next pass decides on fresh facts
            untold = _record(session, row, staff_id, verdict, now)
        change = Change(
            tenant_name, username, facts.state or PROVEN, verdict.state, verdict.since,
            verdict.reason, verdict.detail,
        )  # fmt: skip
        if untold:
            change.mailed_to = await _mail_breakage(
                sessions, blobs, settings, resolver, staff_id=staff_id, verdict=verdict, now=now
            )
        if verdict.send_check:
            await handback.send_challenge(
                sessions, blobs, settings, resolver, staff_id=staff_id, now=now
            )
            change.check_sent_to = primary
        if verdict.state != facts.state and facts.state is not None:
            log.info(
                "forwarding health changed",
                staff=staff_id,
                state=verdict.state,
                reason=verdict.reason,
                since=verdict.since.isoformat(),
            )
        if change.before != change.after or change.mailed_to or change.check_sent_to:
            changes.append(change)
    return changes


async def run_pass(
    sessions: sessionmaker[Session],
    blobs: BlobBackend,
    settings: Settings,
    resolver: Resolver,
    *,
    owner: str,
    now: datetime | None = None,
    tenant_id: int | None = None,
    every: timedelta | None = None,
) -> PassReport:
    """:func:`check_health` under the cluster-wide lease; ``ran`` is False when another node
    holds it, or (with ``every``) when a pass finished less than ``every`` ago."""
    now = now or utcnow()
    if not periodic.try_start(sessions, JOB, owner=owner, now=now, lease=PASS_LEASE, every=every):
        return PassReport(ran=False)
    try:
        changes = await check_health(
            sessions, blobs, settings, resolver, now=now, tenant_id=tenant_id
        )
    finally:
        periodic.finish(sessions, JOB, owner=owner, now=now)
    return PassReport(ran=True, changes=changes)
