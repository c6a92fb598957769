"""What a processing step can decide about one route's copy.

Each step returns one of these instead of raising, so the order of the steps and every way
out of them read as data in ``steps.py``; the processor turns the final decision into the
route's outcome and the message's state.
"""

from __future__ import annotations

from dataclasses import dataclass

# Route outcomes that count as handled, besides a quarantine reason.
RECORDED = "recorded"
CONFIRMATION = "forwarding-confirmation"
FORWARDING_CHECK = "forwarding-check"


@dataclass(frozen=True, slots=True)
class Continue:
    """Nothing decided here: the next step looks."""


CONTINUE = Continue()


@dataclass(frozen=True, slots=True)
class Quarantine:
    """The copy is kept aside; the reason is what users and operators see."""

    reason: str


@dataclass(frozen=True, slots=True)
class Handled:
    """Forwarding set-up mail, dealt with without an activity; ``outcome`` names how."""

    outcome: str  # CONFIRMATION or FORWARDING_CHECK


@dataclass(frozen=True, slots=True)
class Recorded:
    """The copy is an activity: a new one, or merged into the same email's activity."""

    activity: int
    merged: bool


@dataclass(frozen=True, slots=True)
class Defer:
    """A check failed temporarily (DNS): decide nothing now, process the message later."""

    reason: str


# What ends a route's walk through the steps.
FinalDecision = Quarantine | Handled | Recorded | Defer
Decision = Continue | FinalDecision
