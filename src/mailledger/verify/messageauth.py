"""One message's authentication, decided once, before the write transaction.

A tenant's copy takes its verdicts from one of three places: our own checks, the tenant's
trusted gateway (its Authentication-Results, when the peer is inside the gateway's networks),
or, in the demo only, loopback trust. ``authenticate_message`` is the one place that chooses
among them and the one place our own checks run: they wait on DNS for up to the time budget,
and inside the transaction they would hold the database's write lock (SQLite) meanwhile. It
runs them once however many tenants the message is for, and stamps the stored copy with them.
Processing then only reads ``MessageAuth.for_tenant``; it never checks anything itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from mailledger.config import Settings
from mailledger.store.blobbackend import BlobBackend
from mailledger.verify.authenticate import (
    Authenticator,
    in_networks,
    peer_address,
    temperror_outcome,
)
from mailledger.verify.authresults import stamp
from mailledger.verify.results import (
    NONE,
    ARCResult,
    AuthOutcome,
    DMARCResult,
    SPFResult,
)

log = structlog.get_logger("mailledger.verify")

OWN = "own"
GATEWAY = "gateway"
DEMO = "demo"
# Fetched from the staff member's own mailbox (DESIGN §12): the receiving provider's verdicts.
MAILBOX = "mailbox"


def trusts_loopback(settings: Settings, peer: str) -> bool:
    """Whether the demo-only loopback trust applies to this peer."""
    return settings.verify.demo_trust_loopback and _is_loopback(peer)


def _is_loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer_address(peer)).is_loopback
    except ValueError:
        return False


def _empty(from_domain: str, why: str, result: str = NONE, gateway: str = "") -> AuthOutcome:
    return AuthOutcome(
        SPFResult(result, "", "", why),
        SPFResult(NONE, "", "", why),
        (),
        ARCResult(NONE, reason=why),
        DMARCResult(NONE, from_domain, reason=why),
        gateway=gateway,
    )


@dataclass(frozen=True, slots=True)
class Gateway:
    """A tenant's trusted gateway: its networks and the authserv-id it stamps (none: no gateway)."""

    networks: tuple[str, ...] = ()
    authserv_id: str = ""

    def fronts(self, peer: str) -> bool:
        """Whether mail from this peer came through the gateway."""
        return bool(self.networks) and in_networks(peer, list(self.networks))


@dataclass(frozen=True, slots=True)
class Verdicts:
    """The verdicts one tenant's copy is judged on, and where they came from."""

    outcome: AuthOutcome
    source: str  # OWN, GATEWAY or DEMO


@dataclass(frozen=True, slots=True)
class MessageAuth:
    """The verdicts of one message for each tenant it is for, decided ahead of processing."""

    by_tenant: Mapping[int, Verdicts]
    # What a tenant without verdicts gets: every check temperror, so it waits and is retried.
    undecided: AuthOutcome
    stamped: str | None = None  # blob of the copy stamped with our own verdicts, when we checked

    def for_tenant(self, tenant_id: int) -> tuple[AuthOutcome, str]:
        """The verdicts that apply to this tenant's copy, and where they came from."""
        found = self.by_tenant.get(tenant_id)
        if found is None:
            return self.undecided, OWN
        return found.outcome, found.source

    def stored_copy(self, source: str, original: str) -> str:
        """The blob users get: stamped with our Authentication-Results when they decided."""
        if source == OWN and self.stamped is not None:
            return self.stamped
        return original


def authenticate_message(
    authenticator: Authenticator,
    settings: Settings,
    blobs: BlobBackend,
    raw: bytes,
    headers: Mapping[str, list[str]],
    *,
    from_domain: str,
    peer: str,
    helo: str,
    mail_from: str,
    gateways: Mapping[int, Gateway],
    fetched: bool = False,
) -> MessageAuth:
    """Decide the verdicts of every tenant's copy: demo, gateway, mailbox, or our own checks.

    ``gateways`` names each tenant the message is for, with its gateway setting. Our own
    checks run only when a tenant's copy needs them, and then once for all of them.
    ``fetched``: the message was read from a mailbox by sync, not received over SMTP; there
    is no SMTP peer to check, and the receiving provider recorded its verdicts when the mail
    arrived there (``from_mailbox``).
    """
    undecided = temperror_outcome(
        "no verdicts were decided before processing",
        helo=helo,
        mail_from=mail_from,
        from_domain=from_domain,
    )
    if fetched:
        mailbox = Verdicts(from_mailbox(authenticator, headers, from_domain), MAILBOX)
        return MessageAuth(dict.fromkeys(gateways, mailbox), undecided)
    if trusts_loopback(settings, peer):
        log.warning("DEMO ONLY: loopback mail trusted without authentication", peer=peer)
        demo = Verdicts(
            _empty(from_domain, "demo: loopback trusted, no SPF check ran", gateway=DEMO), DEMO
        )
        return MessageAuth(dict.fromkeys(gateways, demo), undecided)
    by_tenant = {
        tenant_id: Verdicts(_from_gateway(authenticator, headers, gateway, from_domain), GATEWAY)
        for tenant_id, gateway in gateways.items()
        if gateway.fronts(peer)
    }
    checked = [tenant_id for tenant_id in gateways if tenant_id not in by_tenant]
    if not checked:
        return MessageAuth(by_tenant, undecided)
    own = authenticator.authenticate(
        raw, peer=peer, helo=helo, mail_from=mail_from, from_domain=from_domain
    )
    by_tenant.update(dict.fromkeys(checked, Verdicts(own, OWN)))
    stamped = blobs.put_pieces(stamp(raw, authenticator.authserv_id, own))
    return MessageAuth(by_tenant, undecided, stamped)


def _from_gateway(
    authenticator: Authenticator,
    headers: Mapping[str, list[str]],
    gateway: Gateway,
    from_domain: str,
) -> AuthOutcome:
    """The gateway's Authentication-Results, or nothing verified when it added none."""
    outcome = authenticator.from_gateway(
        headers.get("authentication-results", []), gateway.authserv_id, from_domain
    )
    if outcome is None:
        why = f"gateway {gateway.authserv_id} added no Authentication-Results"
        outcome = _empty(from_domain, why, gateway=gateway.authserv_id)
    return outcome


def from_mailbox(
    authenticator: Authenticator, headers: Mapping[str, list[str]], from_domain: str
) -> AuthOutcome:
    """The verdicts the mailbox's provider recorded when the mail reached it.

    A message fetched from the staff member's own mailbox has no SMTP arrival of ours to
    check; the provider that received it (Gmail's mx.google.com, Microsoft's
    protection.outlook.com) added its Authentication-Results on top, and drops any that came
    with the same authserv-id (RFC 8601 §5), so the topmost one is the provider's. Without
    one, its ARC-Authentication-Results (the newest instance) say the same. Without either,
    nothing is known of the original sender: every verdict ``none``.
    """
    results = headers.get("authentication-results", [])
    if results:
        authserv_id = _authserv_id(results[0])
        outcome = authenticator.from_gateway(results[:1], authserv_id, from_domain)
        if outcome is not None:
            return outcome
    sealed = _newest_arc_results(headers.get("arc-authentication-results", []))
    if sealed:
        outcome = authenticator.from_gateway([sealed], _authserv_id(sealed), from_domain)
        if outcome is not None:
            return outcome
    return _empty(from_domain, "the mailbox's provider recorded no Authentication-Results")


def _authserv_id(value: str) -> str:
    first = value.split(";", 1)[0].split()
    return first[0] if first else ""


def _newest_arc_results(values: list[str]) -> str:
    """The highest instance's ARC-Authentication-Results without its ``i=N;`` tag."""
    best, best_instance = "", -1
    for value in values:
        tag, _, rest = value.partition(";")
        name, _, number = tag.strip().partition("=")
        if name.strip().lower() == "i" and number.strip().isdigit():
            instance = int(number)
            if instance > best_instance:
                best, best_instance = rest.strip(), instance
    return best
