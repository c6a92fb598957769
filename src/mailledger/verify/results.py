"""Authentication results in RFC 8601 words, one vocabulary for every check.

Results: pass, fail, softfail, neutral, none, temperror, permerror (SPF adds them all; DKIM,
ARC and DMARC use a subset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASS = "pass"  # noqa: S105 - an RFC 8601 result word, not a password
FAIL = "fail"
NONE = "none"
TEMPERROR = "temperror"
# DKIM: signed, but not acceptable to us, e.g. past the per-message limit (RFC 8601 §2.7.1).
POLICY = "policy"
PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SPFResult:
    """SPF for one identity (the MAIL FROM, or the HELO name when MAIL FROM is null)."""

    result: str
    identity: str  # the address or HELO name checked
    domain: str  # the domain SPF was evaluated for
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """One DKIM signature's verdict."""

    result: str
    domain: str  # d=
    selector: str = ""
    algorithm: str = ""
    # A signature with l= shorter than the body vouches for only part of it: never trusted.
    covers_body: bool = True
    reason: str = ""

    @property
    def trusted_pass(self) -> bool:
        """A pass that covers the whole body."""
        return self.result == PASS and self.covers_body


@dataclass(frozen=True, slots=True)
class ARCResult:
    """The ARC chain: its validation (cv) and who sealed each hop."""

    result: str  # pass, fail, none
    sealers: tuple[str, ...] = ()  # d= of each ARC-Seal, instance 1 first
    # The ARC-Authentication-Results of each instance (the sealer's view on arrival).
    auth_results: tuple[str, ...] = ()
    # Headers the newest ARC-Message-Signature covers (lowercase names).
    signed_headers: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DMARCResult:
    """DMARC for the From domain (RFC 7489)."""

    result: str
    from_domain: str
    policy: str = NONE  # the published p= (or sp=) when a record exists
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """Everything sender authentication found out about one message."""

    spf: SPFResult
    helo: SPFResult
    dkim: tuple[DKIMResult, ...]
    arc: ARCResult
    dmarc: DMARCResult
    # Set when a trusted gateway's Authentication-Results replaced our own checks.
    gateway: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def dkim_pass_domains(self) -> set[str]:
        """Domains with a whole-body DKIM pass."""
        return {r.domain for r in self.dkim if r.trusted_pass}

    def summary(self) -> dict[str, Any]:
        """The verdicts as stored on messages and activities, and shown under ``auth``."""
        dkim = [
            {"result": r.result, "domain": r.domain, "selector": r.selector, "reason": r.reason}
            for r in self.dkim
        ]
        return {
            "spf": self.spf.result,
            "spf_domain": self.spf.domain,
            "helo": self.helo.result,
            "dkim": _overall_dkim(self.dkim),
            "dkim_signatures": dkim,
            "arc": self.arc.result,
            "arc_sealers": list(self.arc.sealers),
            "dmarc": self.dmarc.result,
            "dmarc_policy": self.dmarc.policy,
            "from_domain": self.dmarc.from_domain,
            **({"gateway": self.gateway} if self.gateway else {}),
        }


def _overall_dkim(results: tuple[DKIMResult, ...]) -> str:
    if not results:
        return NONE
    if any(r.trusted_pass for r in results):
        return PASS
    for word in (TEMPERROR, PERMERROR, FAIL):
        if any(r.result == word for r in results):
            return word
    return results[0].result
