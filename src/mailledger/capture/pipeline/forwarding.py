"""Forwarding set-up mail: Gmail's confirmation code, or our own check coming back (DESIGN §6).

Both arrive at a user capture address while the staff member sets up forwarding. They are
handled (the code kept for hand-back, the check marked proven), never recorded as activities.
Gmail's confirmation comes from a robot, so this step runs before the robots are screened.
"""

from __future__ import annotations

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import (
    CONFIRMATION,
    CONTINUE,
    FORWARDING_CHECK,
    Decision,
    Defer,
    Handled,
    Quarantine,
)
from mailledger.forwarding import handback
from mailledger.forwarding.confirmations import (
    GMAIL_CONFIRMATION_SENDER,
    GMAIL_SIGNING_DOMAIN,
    extract_gmail_confirmation,
)
from mailledger.mail.addresses import normalize
from mailledger.store.models import ForwardingConfirmation, ReceivedMessage, RouteKind, Staff
from mailledger.verify.messageauth import DEMO
from mailledger.verify.results import TEMPERROR, AuthOutcome


class Forwarding:
    """Gmail's confirmation or our own check coming back: handled, not recorded."""

    name = "forwarding"

    def run(self, context: Context) -> Decision:
        """Handle set-up mail on a user capture route; anything else goes on."""
        if context.route.kind is not RouteKind.USER:
            return CONTINUE
        mail = context.mail
        if normalize(mail.sender) == GMAIL_CONFIRMATION_SENDER:
            return _confirmation(context)
        token = handback.challenge_token(mail.parsed.headers)
        if token:
            return _check(context, token)
        return CONTINUE


def _check(context: Context, token: str) -> Decision:
    """Our forwarding-check challenge coming back: prove the staff member's forwarding."""
    mail, route = context.mail, context.route
    auth, _ = mail.auth.for_tenant(context.tenant.id)
    assert route.staff_id is not None
    verdict = handback.prove_forwarding(
        mail.session,
        # Intake's facts of the message (envelope, peer, time), which processing never changes.
        mail.session.get_one(ReceivedMessage, mail.message.id),
        staff_id=route.staff_id,
        capture=route.rcpt,
        token=token,
        auth=auth,
    )
    if verdict == handback.UNKNOWN:
        return CONTINUE  # not a check of this staff member: ordinary mail
    if verdict == handback.EXPIRED:
        return Quarantine("forwarding-check: the challenge had expired")
    mail.message.auth = auth.summary()
    mail.trace("forwarding", "check", f"forwarding check for {route.rcpt}: {verdict}")
    return Handled(FORWARDING_CHECK)


def _confirmation(context: Context) -> Decision:
    """Keep Gmail's code for the staff member; only Google itself may send one."""
    mail, route, tenant = context.mail, context.route, context.tenant
    auth, source = mail.auth.for_tenant(tenant.id)
    signed = any(r.trusted_pass and r.domain == GMAIL_SIGNING_DOMAIN for r in auth.dkim)
    if not signed and source != DEMO:
        if _temporary(auth) and not mail.final_attempt:
            return Defer("forwarding confirmation: DKIM check failed temporarily")
        return Quarantine(
            f"forged-confirmation: {GMAIL_CONFIRMATION_SENDER} without dkim=pass "
            f"d={GMAIL_SIGNING_DOMAIN}"
        )
    staff = mail.session.get_one(Staff, route.staff_id)
    parsed = mail.parsed
    found = extract_gmail_confirmation(parsed.subject, parsed.body.text, route.rcpt)
    mail.session.add(
        ForwardingConfirmation(
            tenant_id=tenant.id,
            staff_id=staff.id,
            message_id=mail.message.id,
            provider="gmail",
            code=found.code,
            link=found.link,
            requested_by=found.requested_by,
        )
    )
    mail.message.auth = auth.summary()
    mail.trace(
        "forwarding",
        "confirmation",
        f"Gmail forwarding confirmation (code {found.code or 'not found'}) requested by "
        f"{found.requested_by or 'unknown'}; held for hand-back to {staff.primary_address}",
    )
    return Handled(CONFIRMATION)


def _temporary(auth: AuthOutcome) -> bool:
    """Whether any check failed temporarily (DNS), so a refusal would rest on no verdict."""
    words = {auth.spf.result, auth.arc.result, auth.dmarc.result}
    words.update(r.result for r in auth.dkim)
    return TEMPERROR in words
