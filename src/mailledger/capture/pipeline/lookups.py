"""What processing looks up once for a claimed batch of messages, however many there are.

A batch of claimed messages is recorded in a transaction or a few, one after another
(``capture.worker``): most of its messages ask the same questions of the same rows (the
tenant, its verified domains, the staff member's own addresses, who carol@client.example is,
the never-log lists, whether anyone subscribes to webhooks). Each is asked once per batch and
kept here; the next transaction of the batch takes them over (``move_to``). A message whose
work is rolled back (its savepoint) may have created what is kept here (a new contact), so
``forget`` empties the caches and the next message asks again; a transaction that fails
takes its lookups with it.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailledger.routing.matcher import Match, match_parties, never_log_matches, never_log_rules
from mailledger.store import webhooks
from mailledger.store.models import CustomerDomain, StaffAddress, Tenant
from mailledger.store.precompiled import Cursor, Statement

# Run on the driver's cursor, compiled once (``store.precompiled``).
_VERIFIED_DOMAINS = Statement(
    select(CustomerDomain.domain).where(
        CustomerDomain.tenant_id == bindparam("tenant_id"), CustomerDomain.verified.is_(True)
    )
)
_VERIFIED_ADDRESSES = Statement(
    select(StaffAddress.address).where(
        StaffAddress.staff_id == bindparam("staff_id"), StaffAddress.verified.is_(True)
    )
)


class Lookups:
    """Answers read once per claimed batch, for every message in it."""

    def __init__(self, session: Session, sql: Cursor) -> None:
        self._session = session
        self._sql = sql
        self._tenants: dict[int, Tenant] = {}
        self._domains: dict[int, frozenset[str]] = {}
        self._own: dict[int, frozenset[str]] = {}
        self._matches: dict[tuple[int, str], Match] = {}
        self._never_log: dict[int, list[tuple[str, int | None]]] = {}
        self._subscribed: dict[tuple[int, str], bool] = {}

    def move_to(self, session: Session, sql: Cursor) -> None:
        """Ask what is not known yet in the next transaction of the batch."""
        self._session = session
        self._sql = sql

    def forget(self) -> None:
        """Drop every answer: a rolled-back message may have changed what they were read from."""
        self._tenants.clear()
        self._domains.clear()
        self._own.clear()
        self._matches.clear()
        self._never_log.clear()
        self._subscribed.clear()

    def tenant(self, tenant_id: int) -> Tenant:
        """The tenant, held here: the session's identity map keeps it only while it is in use."""
        found = self._tenants.get(tenant_id)
        if found is None:
            found = self._tenants[tenant_id] = self._session.get_one(Tenant, tenant_id)
        return found

    def verified_domains(self, tenant_id: int) -> frozenset[str]:
        """The tenant's verified customer domains (DESIGN §4)."""
        found = self._domains.get(tenant_id)
        if found is None:
            rows = self._sql.rows(_VERIFIED_DOMAINS, {"tenant_id": tenant_id})
            found = self._domains[tenant_id] = frozenset(row[0] for row in rows)
        return found

    def verified_addresses(self, staff_id: int | None) -> frozenset[str]:
        """A staff member's verified own addresses."""
        if staff_id is None:
            return frozenset()
        found = self._own.get(staff_id)
        if found is None:
            rows = self._sql.rows(_VERIFIED_ADDRESSES, {"staff_id": staff_id})
            found = self._own[staff_id] = frozenset(row[0] for row in rows)
        return found

    def match(self, tenant: Tenant, addresses: list[str]) -> dict[str, Match]:
        """What each normalized address is to the tenant; only addresses not yet seen are read."""
        missing = sorted({a for a in addresses if (tenant.id, a) not in self._matches})
        if missing:
            for address, found in match_parties(self._session, tenant, missing).items():
                self._matches[(tenant.id, address)] = found
        return {a: self._matches[(tenant.id, a)] for a in addresses}

    def remember(self, tenant_id: int, match: Match) -> None:
        """An address became something new in this transaction (a contact just created)."""
        self._matches[(tenant_id, match.address)] = match

    def never_log_hits(
        self, tenant: Tenant, staff_ids: set[int], addresses: list[str]
    ) -> list[str]:
        """The addresses the tenant's or these staff members' never-log lists name."""
        rules = self._never_log.get(tenant.id)
        if rules is None:
            rules = self._never_log[tenant.id] = never_log_rules(self._session, tenant)
        patterns = (p for p, staff in rules if staff is None or staff in staff_ids)
        return never_log_matches(patterns, addresses)

    def subscribed(self, tenant_id: int, event_type: str) -> bool:
        """Whether an endpoint of the tenant receives ``event_type``: if not, no event is made."""
        key = (tenant_id, event_type)
        found = self._subscribed.get(key)
        if found is None:
            found = self._subscribed[key] = bool(
                webhooks.subscribers(self._session, tenant_id, event_type)
            )
        return found
