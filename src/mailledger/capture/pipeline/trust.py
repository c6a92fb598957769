"""The trust step: may this route's copy enter the record at all? (DESIGN §4)

Anyone on the internet can write to a capture address, so a copy is recorded only when the
staff member's own mailbox forwarded it (user capture), sent it (log capture), or the relay
authenticated them (submission). The verdicts were decided before the transaction
(``verify.messageauth``); this step applies the rule for the route's kind to them.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Defer, Quarantine
from mailledger.store.models import (
    CustomerDomain,
    Direction,
    PartyKind,
    RouteKind,
    Staff,
    StaffAddress,
)
from mailledger.verify.messageauth import DEMO
from mailledger.verify.results import TEMPERROR
from mailledger.verify.trust import (
    Forward,
    TrustDecision,
    TrustPolicy,
    decide_log_capture,
    decide_user_capture,
)

_VERIFIED_DOMAINS = select(CustomerDomain.domain).where(
    CustomerDomain.tenant_id == bindparam("tenant_id"), CustomerDomain.verified.is_(True)
)
_VERIFIED_ADDRESSES = select(StaffAddress.address).where(
    StaffAddress.staff_id == bindparam("staff_id"), StaffAddress.verified.is_(True)
)


class Trust:
    """The trust rule for the route's kind; then the copy's direction and owner."""

    name = "trust"

    def run(self, context: Context) -> Decision:
        """Refuse what the rule does not accept; a temporary failure waits for a retry."""
        mail, route = context.mail, context.route
        sender_key = context.sender_key
        if route.kind is RouteKind.LOG and context.sender_match.kind is not PartyKind.STAFF:
            return Quarantine(f"log-not-staff: From {sender_key} is not a staff member's address")
        trust = _decide(context)
        context.verdicts = trust.auth
        mail.message.auth = trust.auth
        mail.trace("trust", trust.verdict, f"{route.rcpt}: {trust.reason}")
        if not trust.accept:
            if _temporary(trust) and not mail.final_attempt:
                return Defer(trust.reason)
            if not mail.force:
                return Quarantine(f"untrusted: {trust.reason}")
            mail.trace("trust", "overridden", "released by the operator with --force")
        outbound = context.sender_match.kind is PartyKind.STAFF
        context.direction = Direction.OUTBOUND if outbound else Direction.INBOUND
        context.owner = (
            route.staff_id if route.kind is RouteKind.USER else context.sender_match.staff_id
        )
        return CONTINUE


def _decide(context: Context) -> TrustDecision:
    """Apply the trust rule for the route's kind to the verdicts that hold for its tenant."""
    mail, route, tenant = context.mail, context.route, context.tenant
    message = mail.message
    if message.submitted_by_staff_id is not None and route.kind is RouteKind.LOG:
        return _submitted(context)
    auth, source = mail.auth.for_tenant(tenant.id)
    context.verdict_source = source
    if source == DEMO:
        summary = auth.summary() | {"trust": "demo-loopback"}
        reason = "DEMO ONLY: loopback trusted as an authenticated forwarder"
        return TrustDecision(True, "demo-loopback", reason, summary)
    connection = mail.session.connection()
    domains = connection.execute(_VERIFIED_DOMAINS, {"tenant_id": tenant.id}).scalars()
    policy = TrustPolicy(
        tenant_domains=frozenset(domains),
        trusted_sealers=frozenset(s.lower() for s in mail.settings.verify.trusted_arc_sealers),
    )
    if route.kind is RouteKind.LOG:
        return decide_log_capture(auth, context.sender_key, message.mail_from, policy)
    own = connection.execute(_VERIFIED_ADDRESSES, {"staff_id": route.staff_id}).scalars()
    headers = mail.parsed.headers
    forwarded = tuple(
        " ".join(value.split()).lower()
        for name in ("x-forwarded-to", "x-forwarded-for")
        for value in headers.get(name, [])
    )
    forward = Forward(route.rcpt, message.mail_from, frozenset(own), forwarded)
    return decide_user_capture(auth, forward, policy)


def _submitted(context: Context) -> TrustDecision:
    """Sent through our relay after SMTP AUTH: the login vouches, if the From is theirs.

    The relay refused any other From already (``relay.ownership``); checking again here
    keeps a stored message from a deleted or changed login out of the record.
    """
    session, message = context.mail.session, context.mail.message
    sender_key = context.sender_key
    staff = session.get(Staff, message.submitted_by_staff_id)
    own = session.scalars(
        select(StaffAddress.address).where(
            StaffAddress.staff_id == message.submitted_by_staff_id,
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


def _temporary(trust: TrustDecision) -> bool:
    """Whether a refusal rests on a check that failed temporarily (DNS), not on a verdict."""
    auth = trust.auth
    words = {auth.get("spf"), auth.get("arc"), auth.get("dmarc"), auth.get("dkim")}
    return TEMPERROR in words
