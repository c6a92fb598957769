"""Where one message's authentication verdicts come from: our own checks, a trusted gateway's
Authentication-Results, or (demo only) loopback trust.

Our own checks run once per message however many tenants it is for; a gateway is a tenant's
setting, so its verdict is read per tenant.
"""

from __future__ import annotations

import ipaddress

import structlog

from mailledger.config import Settings
from mailledger.mail.parsing import ParsedMessage
from mailledger.store.blobs import BlobStore
from mailledger.store.models import ReceivedMessage, Tenant
from mailledger.verify.authenticate import Authenticator, in_networks, peer_address
from mailledger.verify.authresults import stamp
from mailledger.verify.results import (
    NONE,
    PASS,
    ARCResult,
    AuthOutcome,
    DMARCResult,
    SPFResult,
)

log = structlog.get_logger("mailledger.verify")

OWN = "own"
GATEWAY = "gateway"
DEMO = "demo"


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


class MessageAuth:
    """The authentication verdicts of one received message, computed at most once."""

    def __init__(
        self,
        authenticator: Authenticator,
        settings: Settings,
        *,
        blobs: BlobStore,
        message: ReceivedMessage,
        raw: bytes,
        parsed: ParsedMessage,
        checked: AuthOutcome | None = None,
        stamped: str | None = None,
    ) -> None:
        """``checked``: our verdicts if computed ahead, ``stamped``: the copy stamped with them."""
        self._authenticator = authenticator
        self._settings = settings
        self._blobs = blobs
        self._message = message
        self._raw = raw
        self._parsed = parsed
        self._own: AuthOutcome | None = None
        self._checked = checked
        self._stamped = stamped
        sender = parsed.sender
        self.from_domain = sender.domain if sender else ""

    def for_tenant(self, tenant: Tenant) -> tuple[AuthOutcome, str]:
        """The verdicts that apply to this tenant's copy, and where they came from."""
        peer = self._message.peer
        if trusts_loopback(self._settings, peer):
            log.warning("DEMO ONLY: loopback mail trusted without authentication", peer=peer)
            return _empty(self.from_domain, "demo: loopback trusted", PASS, gateway=DEMO), DEMO
        if tenant.gateway_networks and in_networks(peer, list(tenant.gateway_networks)):
            outcome = self._authenticator.from_gateway(
                self._parsed.headers.get("authentication-results", []),
                tenant.gateway_authserv_id,
                self.from_domain,
            )
            if outcome is None:
                why = f"gateway {tenant.gateway_authserv_id} added no Authentication-Results"
                outcome = _empty(self.from_domain, why, gateway=tenant.gateway_authserv_id)
            return outcome, GATEWAY
        if self._own is None:
            self._own = self._checked or self._authenticator.authenticate(
                self._raw,
                peer=peer,
                helo=self._message.helo,
                mail_from=self._message.mail_from,
                from_domain=self.from_domain,
            )
        return self._own, OWN

    def stored_copy(self) -> str:
        """The blob users get: stamped with our Authentication-Results when we checked."""
        if self._own is None:
            return self._message.blob
        if self._stamped is not None:
            return self._stamped  # written ahead, from the same prepared verdicts
        return self._blobs.put_pieces(stamp(self._raw, self._authenticator.authserv_id, self._own))
