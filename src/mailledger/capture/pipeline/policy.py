"""The tenant's policies, applied before anything is recorded (DESIGN §5).

Never-log lists, internal mail (only staff), and who must already be known: each can keep a
trusted copy out of the record. An operator's forced release sets the policies aside.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mailledger.capture.pipeline.context import Context, Party
from mailledger.capture.pipeline.decisions import CONTINUE, Decision, Quarantine
from mailledger.routing.matcher import Match, company_owners
from mailledger.store.models import Contact, ContactAddress, Direction, PartyKind, Tenant
from mailledger.store.precompiled import Cursor, Statement

_NEW_CONTACT = Statement(insert(Contact).returning(Contact.id))
_NEW_CONTACT_ADDRESS = Statement(insert(ContactAddress))


class NeverLog:
    """Addresses and domains the tenant or a staff member asked never to record."""

    name = "never-log"

    def run(self, context: Context) -> Decision:
        """Quarantine the copy when a client is on a never-log list of the tenant or its staff."""
        mail = context.mail
        staff_ids = {m.staff_id for m in context.matches.values() if m.staff_id is not None}
        if context.owner is not None:
            staff_ids.add(context.owner)
        external = [p.key for p in context.external]
        hits = mail.lookups.never_log_hits(context.tenant, staff_ids, external)
        if hits and not mail.force:
            return Quarantine(f"never-log: {', '.join(hits)}")
        return CONTINUE


class Internal:
    """Mail between staff only is not client correspondence, unless the tenant records it."""

    name = "internal"

    def run(self, context: Context) -> Decision:
        """Quarantine the copy when every party is staff."""
        if not context.external and not (context.tenant.record_internal or context.mail.force):
            return Quarantine("internal: every party is staff")
        return CONTINUE


class KnownParties:
    """Inbound needs a known sender, outbound a known recipient, unless the tenant creates them."""

    name = "known-parties"

    def run(self, context: Context) -> Decision:
        """Create unknown parties as contacts, or quarantine when nobody is known."""
        mail, tenant, matches = context.mail, context.tenant, context.matches
        external = context.external
        if context.direction is Direction.INBOUND:
            candidates = [p for p in external if p.role == "from"]
        else:
            candidates = external
        if not candidates:
            return CONTINUE
        if tenant.create_unknown_contacts:
            # Known only by their company's domain, or not at all: they become contacts.
            for party in candidates:
                if matches[party.key].kind in (PartyKind.UNMATCHED, PartyKind.COMPANY):
                    matches[party.key] = _create_contact(mail.session, mail.sql, tenant, party)
                    mail.lookups.remember(tenant.id, matches[party.key])
                    mail.trace("contact", "created", f"{party.key} added as a contact")
            return CONTINUE
        if any(matches[p.key].kind is not PartyKind.UNMATCHED for p in candidates):
            return CONTINUE
        if mail.message.force_record:
            return CONTINUE
        label = "unknown-sender" if context.direction is Direction.INBOUND else "unknown-recipients"
        names = ", ".join(p.key for p in candidates)
        return Quarantine(f"{label}: {names} not a contact or company")


def _create_contact(session: Session, sql: Cursor, tenant: Tenant, party: Party) -> Match:
    """A new contact for the party, in the one company that owns its domain, if any.

    Inserts on the driver's cursor: the transaction records a batch of messages, and an ORM
    flush here would write every other message's pending changes too.
    """
    owners = company_owners(session, tenant, {party.mailbox.domain})
    company_id = owners.get(party.mailbox.domain)
    contact_id = sql.scalar(
        _NEW_CONTACT,
        {"tenant_id": tenant.id, "name": party.mailbox.name[:200], "company_id": company_id},
    )
    sql.run(
        _NEW_CONTACT_ADDRESS,
        {"contact_id": contact_id, "tenant_id": tenant.id, "address": party.key},
    )
    return Match(party.key, PartyKind.CONTACT, contact_id=contact_id, company_id=company_id)
