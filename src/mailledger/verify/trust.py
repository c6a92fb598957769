"""The trust rules of DESIGN §4: may this route's copy enter the record?

Anyone can send to a capture address, so a copy is recorded only when the staff member's own
mailbox demonstrably forwarded it (user capture) or sent it (log capture). A domain the tenant
has verified proves itself by SPF or DKIM; on a shared domain (gmail.com) the authenticated
*address* must be the staff member's, because every other user of that domain passes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailledger.mail.addresses import AddressError, normalize, parse_address
from mailledger.verify.dmarc import aligned
from mailledger.verify.results import PASS, AuthOutcome

GMAIL_FORWARD_TAG = "+caf_="


@dataclass(frozen=True, slots=True)
class TrustDecision:
    """Whether to record, the verdict users see, and the reason for the trace."""

    accept: bool
    verdict: str  # "forwarder-authenticated", "sender-authenticated", "untrusted"
    reason: str
    auth: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What the tenant and the operator vouch for."""

    tenant_domains: frozenset[str]  # verified customer domains
    trusted_sealers: frozenset[str]  # ARC sealers whose chains we believe (google.com…)


@dataclass(frozen=True, slots=True)
class Forward:
    """A user-capture copy: who it was for and how it arrived."""

    rcpt: str  # the capture address (richard@acme.capture.example)
    envelope_sender: str
    own_addresses: frozenset[str]  # the staff member's normalized own addresses
    # X-Forwarded-For / X-Forwarded-To values, lowercased, for the ARC identity check.
    forwarded_headers: tuple[str, ...] = ()


def _envelope(sender: str) -> tuple[str, str, str]:
    """(normalized address, domain, Gmail forward target or '') of an envelope sender."""
    if not sender:
        return "", "", ""
    try:
        box = parse_address(sender)
    except AddressError:
        return "", "", ""
    target = ""
    local = box.local.lower()
    if GMAIL_FORWARD_TAG in local:
        # richard.smith+caf_=richard=acme.capture.example@gmail.com forwards to
        # richard@acme.capture.example: the tag names where Gmail was told to forward.
        encoded = local.split(GMAIL_FORWARD_TAG, 1)[1]
        user, _, domain = encoded.rpartition("=")
        target = f"{user}@{domain}" if user and domain else ""
    return normalize(box), box.domain, target


def original_verdict(auth: AuthOutcome, policy: TrustPolicy) -> dict[str, str]:
    """How sure we are the client wrote it: aligned DKIM surviving the forward, else ARC.

    ARC can tell what a trusted sealer saw on arrival, but never turns our own DMARC
    failure into a pass (RFC 8617 §7.2): both are shown, under their own names.
    """
    from_domain = auth.dmarc.from_domain
    for result in auth.dkim:
        if result.trusted_pass and aligned(result.domain, from_domain, "r"):
            return {"result": PASS, "via": "dkim", "detail": f"dkim pass d={result.domain}"}
    if auth.arc.result == PASS and auth.arc.sealers:
        for instance, sealer in enumerate(auth.arc.sealers):
            if sealer in policy.trusted_sealers and instance < len(auth.arc.auth_results):
                words = _dmarc_word(auth.arc.auth_results[instance])
                if words:
                    return {
                        "result": words,
                        "via": f"arc:{sealer}",
                        "detail": f"{sealer} saw dmarc={words} on arrival",
                    }
    return {"result": auth.dmarc.result, "via": "dmarc", "detail": auth.dmarc.reason}


def _dmarc_word(auth_results: str) -> str:
    for piece in auth_results.replace(";", " ").split():
        if piece.lower().startswith("dmarc="):
            return piece.split("=", 1)[1].lower()
    return ""


def _decision(
    accept: bool, verdict: str, reason: str, auth: AuthOutcome, **extra: Any
) -> TrustDecision:
    summary = auth.summary()
    summary["trust"] = verdict
    summary["trust_reason"] = reason
    summary.update(extra)
    return TrustDecision(accept, verdict, reason, summary)


def decide_user_capture(auth: AuthOutcome, forward: Forward, policy: TrustPolicy) -> TrustDecision:
    """Record only when the forwarder is authenticated as the staff member's own mailbox."""
    original = original_verdict(auth, policy)
    address, domain, target = _envelope(forward.envelope_sender)
    if target and target != forward.rcpt:
        reason = f"forward tag names {target}, not {forward.rcpt}"
        return _decision(False, "untrusted", reason, auth, original=original)
    spf = auth.spf
    if spf.result == PASS and domain:
        if domain in policy.tenant_domains:
            reason = f"spf=pass for tenant domain {domain}"
            return _decision(True, "forwarder-authenticated", reason, auth, original=original)
        if address in forward.own_addresses:
            reason = f"spf=pass for {domain} and {address} is the staff member's own address"
            return _decision(True, "forwarder-authenticated", reason, auth, original=original)
    for result in auth.dkim:
        if result.trusted_pass and result.domain in policy.tenant_domains:
            reason = f"dkim=pass d={result.domain} (tenant domain)"
            return _decision(True, "forwarder-authenticated", reason, auth, original=original)
    arc_ok, arc_reason = _arc_identity(auth, forward, policy)
    if arc_ok:
        return _decision(True, "forwarder-authenticated", arc_reason, auth, original=original)
    why = [f"spf={spf.result} for {domain or '<>'}"]
    if spf.result == PASS and domain:
        why.append(f"{address} is not one of the staff member's addresses")
    why.append(_dkim_reason(auth))
    why.append(arc_reason)
    reason = "forwarder not authenticated (" + "; ".join(why) + ")"
    return _decision(False, "untrusted", reason, auth, original=original)


def _dkim_reason(auth: AuthOutcome) -> str:
    """The DKIM part of a refusal: what passed, and why it does not count."""
    passed = sorted(auth.dkim_pass_domains())
    if passed:
        return f"dkim=pass d={','.join(passed)} (not a tenant domain)"
    partial = sorted({r.domain for r in auth.dkim if r.result == PASS and not r.covers_body})
    if partial:
        return f"dkim=pass d={','.join(partial)} but l= leaves part of the body unsigned"
    return f"dkim={_dkim_word(auth)}"


def _dkim_word(auth: AuthOutcome) -> str:
    return str(auth.summary()["dkim"])


def _arc_identity(auth: AuthOutcome, forward: Forward, policy: TrustPolicy) -> tuple[bool, str]:
    """Whether a trusted sealer's valid chain names this staff member's mailbox as forwarder."""
    arc = auth.arc
    if arc.result != PASS or not arc.sealers:
        return False, f"arc={arc.result}"
    newest = arc.sealers[-1]
    if newest not in policy.trusted_sealers:
        return False, f"arc=pass but sealer {newest} is not trusted"
    if not {"x-forwarded-for", "x-forwarded-to"} & set(arc.signed_headers):
        return False, f"arc=pass by {newest} but its signature covers no forwarding header"
    for value in forward.forwarded_headers:
        tokens = {t.strip("<>,;") for t in value.lower().split()}
        owns = any(_same_mailbox(t, forward.own_addresses) for t in tokens)
        if owns and (forward.rcpt in tokens or len(tokens) == 1):
            return True, f"arc=pass sealed by trusted {newest} for the staff member's mailbox"
    return False, f"arc=pass by {newest} but the forwarding headers name another mailbox"


def _same_mailbox(token: str, own: frozenset[str]) -> bool:
    try:
        return normalize(token) in own
    except AddressError:
        return False


def decide_log_capture(
    auth: AuthOutcome, from_address: str, envelope_sender: str, policy: TrustPolicy
) -> TrustDecision:
    """A BCC to log@ must come from a staff address with a DMARC-aligned pass.

    ``from_address`` is the normalized From, already known to be one of a staff member's
    own addresses. On a shared domain the envelope address must be that same address.
    """
    domain = from_address.rpartition("@")[2]
    address, env_domain, _ = _envelope(envelope_sender)
    spf_aligned = auth.spf.result == PASS and aligned(env_domain, domain, "r")
    dkim_aligned = [
        r.domain for r in auth.dkim if r.trusted_pass and aligned(r.domain, domain, "r")
    ]
    if domain in policy.tenant_domains:
        if spf_aligned:
            reason = f"spf=pass aligned with From domain {domain}"
            return _decision(True, "sender-authenticated", reason, auth)
        if dkim_aligned:
            reason = f"dkim=pass d={dkim_aligned[0]} aligned with From domain {domain}"
            return _decision(True, "sender-authenticated", reason, auth)
        reason = (
            f"From {from_address} has no aligned pass "
            f"(spf={auth.spf.result}; dkim={_dkim_word(auth)})"
        )
        return _decision(False, "untrusted", reason, auth)
    if auth.spf.result == PASS and address == from_address:
        reason = f"spf=pass for {domain} and the envelope sender is {from_address} itself"
        return _decision(True, "sender-authenticated", reason, auth)
    reason = (
        f"From {from_address} is on shared domain {domain}: the envelope sender must be that "
        f"address with spf=pass (got {envelope_sender or '<>'}, spf={auth.spf.result})"
    )
    return _decision(False, "untrusted", reason, auth)
