"""The processing pipeline, in order: read this list to know what happens to a route's copy.

Each step looks at one question and returns a decision; the first one that is not
``CONTINUE`` ends the route's walk. Record comes last and always decides.
"""

from __future__ import annotations

from typing import Protocol

from mailledger.capture.pipeline.context import Context
from mailledger.capture.pipeline.decisions import Continue, Decision, FinalDecision
from mailledger.capture.pipeline.forwarding import Forwarding
from mailledger.capture.pipeline.loopguard import LoopGuard
from mailledger.capture.pipeline.parties import MatchParties
from mailledger.capture.pipeline.policy import Internal, KnownParties, NeverLog
from mailledger.capture.pipeline.record import Record
from mailledger.capture.pipeline.screen import Automated, Screen
from mailledger.capture.pipeline.trust import Trust
from mailledger.capture.pipeline.volume import VolumeBrake


class Step(Protocol):
    """One named question about a route's copy."""

    name: str

    def run(self, context: Context) -> Decision:
        """Decide, or return ``CONTINUE`` for the next step; trace what was decided."""
        ...


STEPS: tuple[Step, ...] = (
    Screen(),  # role addresses, mail From a capture address
    Forwarding(),  # Gmail's confirmation code, our forwarding check coming back
    Automated(),  # auto-replies, bulk, bounces
    MatchParties(),  # staff first, then contacts, then companies
    Trust(),  # DESIGN §4: did the staff member's own mailbox forward or send it?
    NeverLog(),  # the tenant's and the staff's never-log lists
    Internal(),  # only staff: not recorded unless the tenant says so
    KnownParties(),  # unknown senders become contacts, or are quarantined
    LoopGuard(),  # loop evidence: our trace back, X-Loop, hops, one email again and again
    VolumeBrake(),  # too many from one sender nobody authenticated, within a window
    Record(),  # record the activity, or merge into the same email's
)


def decide_route(context: Context) -> FinalDecision:
    """Walk the steps until one decides."""
    for step in STEPS:
        decision = step.run(context)
        if not isinstance(decision, Continue):
            return decision
    raise AssertionError("the record step always decides")
