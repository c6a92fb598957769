"""The trust step: may this route's copy enter the record? (DESIGN §4)

Sender authentication (SPF, DKIM, ARC, DMARC) fills this step in a later release. Until then
every copy is recorded with the verdict ``unverified`` so users can see that nothing vouched
for it, and the seam where verification plugs in is already named and traced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailledger.store.models import RouteKind

UNVERIFIED = "unverified"


@dataclass(frozen=True, slots=True)
class TrustDecision:
    """Whether to record, the verdict shown to users, and the reason for the trace."""

    accept: bool
    verdict: str
    reason: str
    auth: dict[str, Any] = field(default_factory=dict)


def decide_trust(kind: RouteKind, envelope_sender: str) -> TrustDecision:
    """Decide for one route; without verification the copy is accepted as unverified."""
    return TrustDecision(
        accept=True,
        verdict=UNVERIFIED,
        reason=f"{kind.value} capture from {envelope_sender or '<>'}: sender not verified yet",
        auth={
            "spf": "none",
            "dkim": "none",
            "dmarc": "none",
            "arc": "none",
            "trust": UNVERIFIED,
        },
    )
