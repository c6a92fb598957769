"""Matching: who the email is between, staff first, then contacts, then companies (DESIGN §5).

Every later step asks the same question of the same answer: trust needs to know whether the
From is staff, never-log and recording need the clients, so the match is made once per route.
"""

from __future__ import annotations

from mailledger.capture.pipeline.context import Context, Party
from mailledger.capture.pipeline.decisions import CONTINUE, Decision
from mailledger.mail.addresses import Mailbox, normalize
from mailledger.mail.parsing import ParsedMessage
from mailledger.store.models import Tenant


class MatchParties:
    """From, To and Cc, each matched to staff, a contact, a company, or nobody."""

    name = "match"

    def run(self, context: Context) -> Decision:
        """Fill in the route's parties and matches, and trace what each address is."""
        mail = context.mail
        parties = parties_of(mail.parsed, mail.sender, context.tenant)
        matches = mail.lookups.match(context.tenant, [p.key for p in parties])
        context.parties, context.matches = parties, matches
        mail.trace(
            "match",
            "matched",
            ", ".join(f"{p.role} {p.key}={matches[p.key].kind.value}" for p in parties),
        )
        return CONTINUE


def parties_of(parsed: ParsedMessage, sender: Mailbox, tenant: Tenant) -> list[Party]:
    """From, To and Cc, normalized, without the tenant's own capture addresses."""
    seen: set[tuple[str, str]] = set()
    parties = []
    for role, boxes in (("from", (sender,)), ("to", parsed.to), ("cc", parsed.cc)):
        for box in boxes:
            if box.domain == tenant.capture_domain:
                continue
            key = normalize(box, strip_plus=tenant.strip_plus_tags)
            if (role, key) in seen:
                continue
            seen.add((role, key))
            parties.append(Party(role, box, key))
    return parties
