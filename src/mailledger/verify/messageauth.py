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
from mailledger.store.models import AccountKind
from mailledger.verify.authenticate import (
    Authenticator,
    in_networks,
    peer_address,
    temperror_outcome,
)
from mailledger.verify.authresults import from_gateway, stamp
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
# The authserv-id Gmail (and Google Workspace) stamps on mail it receives.
GOOGLE_AUTHSERV_ID = "mx.google.com"
# Exchange Online stamps no authserv-id; its verdicts are recorded under this name.
MICROSOFT_LABEL = "protection.outlook.com"
UNTRUSTED_SERVER = (
    "the mailbox's server is not trusted to report the sender's checks: set --authserv-id "
    "to the id its Authentication-Results use"
)


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
class MailboxTrust:
    """Whose Authentication-Results the mail of one mailbox account is judged on.

    ``authserv_id``: the id (RFC 8601 §2.2, lowercase) the topmost header must begin with;
    ``unnamed``: Microsoft 365, whose Exchange Online stamps its header with no id at all.
    Neither: nobody's, as for a plain IMAP account without ``--authserv-id``.
    """

    authserv_id: str = ""
    unnamed: bool = False

    @property
    def provider(self) -> str:
        """The provider, named for a reason in words."""
        if self.unnamed:
            return "Microsoft 365"
        return self.authserv_id or "the mailbox's server"


def mailbox_trust(kind: AccountKind, configured: str) -> MailboxTrust:
    """The trust of an account of this kind, with its ``--authserv-id`` (plain IMAP only).

    Google and Microsoft 365 are known; a plain IMAP server's id is whatever its operator
    configured it to stamp, so only the account's own setting can name it.
    """
    if kind is AccountKind.GOOGLE:
        return MailboxTrust(GOOGLE_AUTHSERV_ID)
    if kind is AccountKind.MICROSOFT:
        return MailboxTrust(unnamed=True)
    return MailboxTrust(configured.strip().lower())


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
    mailbox: MailboxTrust | None = None,
) -> MessageAuth:
    """Decide the verdicts of every tenant's copy: demo, gateway, mailbox, or our own checks.

    ``gateways`` names each tenant the message is for, with its gateway setting. Our own
    checks run only when a tenant's copy needs them, and then once for all of them.
    ``mailbox``: the message was read from a mailbox by sync, not received over SMTP, and
    whose Authentication-Results that account trusts; there is no SMTP peer to check, and
    the receiving provider recorded its verdicts when the mail arrived there
    (``from_mailbox``).
    """
    undecided = temperror_outcome(
        "no verdicts were decided before processing",
        helo=helo,
        mail_from=mail_from,
        from_domain=from_domain,
    )
    if mailbox is not None:
        fetched = Verdicts(from_mailbox(headers, from_domain, mailbox), MAILBOX)
        return MessageAuth(dict.fromkeys(gateways, fetched), undecided)
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
    headers: Mapping[str, list[str]], from_domain: str, trust: MailboxTrust
) -> AuthOutcome:
    """The verdicts the mailbox's provider recorded when the mail reached it, or none.

    A message fetched from the staff member's own mailbox has no SMTP arrival of ours to
    check. The provider that received it added its Authentication-Results on top of the
    header section, last, and removes or ignores any that came from outside claiming its
    authserv-id (RFC 8601 §5). So only the *topmost* header is read, and only when it is the
    account's provider's: ``trust`` names it. Anything lower down, or on top under another id,
    may have been written by the sender, so it gives no verdict at all: a spoofer's
    ``mx.google.com; dkim=pass`` on a Dovecot that stamps nothing stays ``none``.

    ARC-Authentication-Results are not read either. A sender can write them as easily;
    they could be trusted only with the chain verified and the newest seal the provider's.
    The providers that seal on receipt (Gmail) stamp their Authentication-Results on the
    same message, so the seal would add no verdict the topmost header does not already
    give, and it would cost a DNS-bound ARC check per message and a per-provider sealing
    domain to maintain; the fallback was only ever reached when the provider's header was
    missing, which is exactly when what is left is anybody's.
    """
    if not trust.authserv_id and not trust.unnamed:
        return _empty(from_domain, UNTRUSTED_SERVER)
    results = headers.get("authentication-results", [])
    if not results:
        why = f"{trust.provider} recorded no Authentication-Results for this message"
        return _empty(from_domain, why)
    top = results[0]
    named = _authserv_id(top)
    if trust.unnamed:
        if named:
            why = (
                f"the topmost Authentication-Results names {named}, not Microsoft 365's "
                "(Exchange Online stamps its own without an authserv-id)"
            )
            return _empty(from_domain, why)
        # Read with a stand-in id: the parser, like RFC 8601 §2.2, expects one.
        outcome = from_gateway(f"{MICROSOFT_LABEL}; {top}", from_domain)
    elif named.lower() != trust.authserv_id:
        why = (
            f"the topmost Authentication-Results is {named or 'without an authserv-id'}'s, "
            f"not {trust.authserv_id}'s: {trust.provider} stamped none on this message"
        )
        return _empty(from_domain, why)
    else:
        outcome = from_gateway(top, from_domain)
    if outcome is None:
        return _empty(from_domain, f"{trust.provider}'s Authentication-Results could not be read")
    return outcome


def _authserv_id(value: str) -> str:
    """The authserv-id a header value begins with; empty for Exchange Online's ``spf=...``.

    RFC 8601 §2.2: ``authserv-id [version] ;`` and an id holds no ``=``, where the first
    result (``method=result``) always does.
    """
    first = value.split(";", 1)[0].split()
    if not first or "=" in first[0]:
        return ""
    return first[0]
