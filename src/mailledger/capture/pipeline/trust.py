"""The trust step: may this route's copy enter the record at all? (DESIGN §4)

Anyone on the internet can write to a capture address, so a copy is recorded only when the
staff member's own mailbox forwarded it (user capture), sent it (log capture), the relay
authenticated them (submission), or sync fetched it from their own mailbox (DESIGN §12).
The verdicts were decided before the transaction (``verify.messageauth``); this step applies
the rule for the route's kind to them.
"""

from __future__ import annotations

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Defer, Quarantine
from mailledger.store.models import (
    Direction,
    PartyKind,
    RouteKind,
    Staff,
)
from mailledger.verify.messageauth import DEMO
from mailledger.verify.results import TEMPERROR, AuthOutcome
from mailledger.verify.trust import (
    Forward,
    TrustDecision,
    TrustPolicy,
    decide_log_capture,
    decide_user_capture,
    original_verdict,
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
        mailbox_owned = route.kind in (RouteKind.USER, RouteKind.SYNC)
        context.owner = route.staff_id if mailbox_owned else context.sender_match.staff_id
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
    policy = TrustPolicy(
        tenant_domains=mail.lookups.verified_domains(tenant.id),
        trusted_sealers=frozenset(s.lower() for s in mail.settings.verify.trusted_arc_sealers),
    )
    if route.kind is RouteKind.LOG:
        return decide_log_capture(auth, context.sender_key, message.mail_from, policy)
    if route.kind is RouteKind.SYNC:
        return _fetched(context, auth, policy)
    own = mail.lookups.verified_addresses(route.staff_id)
    headers = mail.parsed.headers
    forwarded = tuple(
        " ".join(value.split()).lower()
        for name in ("x-forwarded-to", "x-forwarded-for")
        for value in headers.get(name, [])
    )
    forward = Forward(route.rcpt, message.mail_from, own, forwarded)
    return decide_user_capture(auth, forward, policy)


def _submitted(context: Context) -> TrustDecision:
    """Sent through our relay after SMTP AUTH: the login vouches, if the From is theirs.

    The relay refused any other From already (``relay.ownership``); checking again here
    keeps a stored message from a deleted or changed login out of the record.
    """
    mail = context.mail
    message = mail.message
    sender_key = context.sender_key
    staff = mail.session.get(Staff, message.submitted_by_staff_id)
    own = mail.lookups.verified_addresses(message.submitted_by_staff_id)
    login = staff.username if staff is not None else "a removed staff member"
    auth = {"spf": "none", "dkim": "none", "dmarc": "none", "arc": "none"}
    if staff is None or sender_key not in own:
        reason = f"submission by {login}: From {sender_key} is not their address"
        return TrustDecision(False, "untrusted", reason, auth | {"trust": "untrusted"})
    reason = f"submission: authenticated as {login}"
    return TrustDecision(True, "submission", reason, auth | {"trust": "submission"})


def _fetched(context: Context, auth: AuthOutcome, policy: TrustPolicy) -> TrustDecision:
    """Fetched by sync from the staff member's own mailbox: our login there vouches.

    Nobody can put mail into that mailbox through us: sync logged in with the credentials
    the staff member (or their admin) connected, so the path is proven the way a relay
    login proves a submission. How sure we are that the client wrote it is the receiving
    provider's verdict, read from the stored headers (``verify.messageauth.from_mailbox``),
    recorded as ``original`` as on forwarded mail; it never turns into a pass of ours.
    """
    message = context.mail.message
    if message.mailbox_account_id is None:
        reason = "sync route on a message no mailbox account fetched"
        return TrustDecision(False, "untrusted", reason, auth.summary() | {"trust": "untrusted"})
    reason = (
        f"fetched from the staff member's own mailbox {context.route.rcpt} "
        f"(account {message.mailbox_account_id})"
    )
    summary = auth.summary() | {
        "trust": "mailbox",
        "trust_reason": reason,
        "original": original_verdict(auth, policy),
    }
    return TrustDecision(True, "mailbox", reason, summary)


def _temporary(trust: TrustDecision) -> bool:
    """Whether a refusal rests on a check that failed temporarily (DNS), not on a verdict."""
    auth = trust.auth
    words = {auth.get("spf"), auth.get("arc"), auth.get("dmarc"), auth.get("dkim")}
    return TEMPERROR in words
