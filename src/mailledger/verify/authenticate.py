"""Sender authentication for one stored message: SPF, DKIM, ARC, then DMARC.

pyspf and dkimpy block on DNS, so the checks run in a worker thread with one time budget for
the whole message; a budget that runs out gives ``temperror`` for what was not finished,
never an exception (STYLE: blocking libraries stay off the event loop).
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from mailledger.config import Settings
from mailledger.dnsauth.resolver import DNSBudgetExhaustedError, Resolver, query_budget
from mailledger.verify import dmarc
from mailledger.verify.authresults import from_gateway
from mailledger.verify.results import (
    NONE,
    TEMPERROR,
    ARCResult,
    AuthOutcome,
    DKIMResult,
    DMARCResult,
    SPFResult,
)
from mailledger.verify.signatures import signed_message, verify_arc, verify_dkim

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mailledger-auth")


def peer_address(peer: str) -> str:
    """The IP address of an ``ip:port`` or ``[v6]:port`` peer string."""
    host = peer.rsplit(":", 1)[0] if peer.count(":") == 1 or peer.startswith("[") else peer
    return host.strip("[]")


def _is_domain(helo: str) -> bool:
    return "." in helo and not helo.startswith("[") and not _is_ip(helo)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Authenticator:
    """Runs every check for a message through the one resolver."""

    def __init__(self, resolver: Resolver, settings: Settings) -> None:
        self.resolver = resolver
        self.settings = settings
        self.authserv_id = settings.verify.authserv_id or settings.service.hostname

    def _txt(self, name: str) -> tuple[str, list[str]]:
        try:
            result = self.resolver.txt_sync(name)
        except DNSBudgetExhaustedError:
            return NONE, []  # the message spent its questions: no policy found, never a pass
        status = result.status if result.status in ("ok", TEMPERROR) else NONE
        return status, list(result.texts)

    def _spf(self, ip: str, mail_from: str, helo: str) -> tuple[SPFResult, SPFResult]:
        helo_result = SPFResult(NONE, helo, helo.lower(), reason="HELO is not a domain name")
        if _is_domain(helo):
            word, why = self.resolver.spf_check(ip, f"postmaster@{helo}", helo)
            helo_result = SPFResult(word, helo, helo.lower(), why)
        if not mail_from:
            # RFC 7208 §2.4: with a null reverse path the HELO identity is the one checked.
            return SPFResult(helo_result.result, "", helo_result.domain, "null sender"), helo_result
        domain = mail_from.rpartition("@")[2].lower()
        word, why = self.resolver.spf_check(ip, mail_from, helo)
        return SPFResult(word, mail_from, domain, why), helo_result

    def check(
        self, raw: bytes, *, peer: str, helo: str, mail_from: str, from_domain: str
    ) -> AuthOutcome:
        """Every check, blocking; call from a worker thread (see ``authenticate``).

        The DNS questions of all four checks together are capped (``[verify]
        max_dns_queries``), and DKIM signatures are checked up to ``max_signatures``, the
        one aligned with From first, then the forwarder's (the envelope sender's domain).
        """
        limits = self.settings.verify
        with query_budget(limits.max_dns_queries):
            spf_result, helo_result = self._spf(peer_address(peer), mail_from, helo)
            signed = signed_message(raw)
            dkim_results = verify_dkim(
                signed,
                self.resolver.dkim_dnsfunc,
                limit=limits.max_signatures,
                prefer=(from_domain, mail_from.rpartition("@")[2].lower()),
            )
            arc_result = verify_arc(signed, self.resolver.dkim_dnsfunc)
            dmarc_result = dmarc.evaluate(from_domain, spf_result, dkim_results, self._txt)
        return AuthOutcome(spf_result, helo_result, dkim_results, arc_result, dmarc_result)

    def authenticate(
        self,
        raw: bytes,
        *,
        peer: str,
        helo: str,
        mail_from: str,
        from_domain: str,
    ) -> AuthOutcome:
        """``check`` within the per-message time budget; out of time is temperror."""
        future = _POOL.submit(
            self.check, raw, peer=peer, helo=helo, mail_from=mail_from, from_domain=from_domain
        )
        try:
            return future.result(timeout=self.settings.verify.time_budget_seconds)
        except FutureTimeout:
            future.cancel()
            return temperror_outcome(
                "time budget exhausted", helo=helo, mail_from=mail_from, from_domain=from_domain
            )

    def from_gateway(
        self, header_values: list[str], gateway_id: str, from_domain: str
    ) -> AuthOutcome | None:
        """The topmost Authentication-Results of a trusted gateway, read as our own verdicts."""
        for value in header_values:
            first = value.split(";", 1)[0].split()
            if first and first[0].lower() == gateway_id.lower():
                return from_gateway(value, from_domain)
        return None


def temperror_outcome(why: str, *, helo: str, mail_from: str, from_domain: str) -> AuthOutcome:
    """Every check ``temperror``: nothing was decided, so the message waits and is retried."""
    return AuthOutcome(
        SPFResult(TEMPERROR, mail_from, mail_from.rpartition("@")[2], why),
        SPFResult(TEMPERROR, helo, helo, why),
        (DKIMResult(TEMPERROR, "", reason=why),),
        ARCResult(TEMPERROR, reason=why),
        DMARCResult(TEMPERROR, from_domain, reason=why),
    )


def in_networks(peer: str, networks: list[str]) -> bool:
    """Whether the peer's address is inside one of the configured networks."""
    try:
        address = ipaddress.ip_address(peer_address(peer))
    except ValueError:
        return False
    for network in networks:
        try:
            if address in ipaddress.ip_network(network, strict=False):
                return True
        except ValueError:
            continue
    return False
