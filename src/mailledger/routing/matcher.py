"""Who each party of an email is: staff first, then contacts, then companies by domain.

Staff come first so that a staff member entered by mistake as a contact still counts as staff
(DESIGN §5). Companies match by domain, never for free-mail domains, whose list is data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from mailledger.mail.addresses import domain_of
from mailledger.mail.freemail import free_mail_domains
from mailledger.store.models import (
    CompanyDomain,
    Contact,
    ContactAddress,
    NeverLog,
    PartyKind,
    StaffAddress,
    Tenant,
)

# Built once and run on the session's connection: on SQLite, building a statement and the
# ORM's handling of its result cost ten times what running it does.
_STAFF = select(StaffAddress.address, StaffAddress.staff_id).where(
    StaffAddress.tenant_id == bindparam("tenant_id"),
    StaffAddress.address.in_(bindparam("addresses", expanding=True)),
)
_CONTACTS = (
    select(ContactAddress.address, Contact.id, Contact.company_id)
    .join(Contact, Contact.id == ContactAddress.contact_id)
    .where(
        ContactAddress.tenant_id == bindparam("tenant_id"),
        ContactAddress.address.in_(bindparam("addresses", expanding=True)),
    )
)
_COMPANY_DOMAINS = select(CompanyDomain.domain, CompanyDomain.company_id).where(
    CompanyDomain.tenant_id == bindparam("tenant_id"),
    CompanyDomain.domain.in_(bindparam("domains", expanding=True)),
)
_NEVER_LOG = select(NeverLog.pattern).where(
    NeverLog.tenant_id == bindparam("tenant_id"),
    (NeverLog.staff_id.is_(None)) | (NeverLog.staff_id.in_(bindparam("staff", expanding=True))),
)
_ALL_NEVER_LOG = select(NeverLog.pattern, NeverLog.staff_id).where(
    NeverLog.tenant_id == bindparam("tenant_id")
)


@dataclass(frozen=True, slots=True)
class Match:
    """What one normalized address is to a tenant."""

    address: str
    kind: PartyKind
    staff_id: int | None = None
    contact_id: int | None = None
    company_id: int | None = None


def match_parties(session: Session, tenant: Tenant, addresses: list[str]) -> dict[str, Match]:
    """Match normalized addresses for one tenant with three indexed queries.

    Reads through the connection, so what the session holds unflushed is not seen: a caller
    that adds a contact flushes it before matching again.
    """
    wanted = sorted(set(addresses))
    result: dict[str, Match] = {}
    if not wanted:
        return result
    connection = session.connection()
    for address, staff_id in connection.execute(
        _STAFF, {"tenant_id": tenant.id, "addresses": wanted}
    ):
        result[address] = Match(address, PartyKind.STAFF, staff_id=staff_id)
    rest = [a for a in wanted if a not in result]
    if rest:
        for address, contact_id, company_id in connection.execute(
            _CONTACTS, {"tenant_id": tenant.id, "addresses": rest}
        ):
            result[address] = Match(
                address, PartyKind.CONTACT, contact_id=contact_id, company_id=company_id
            )
    rest = [a for a in wanted if a not in result]
    owners = company_owners(session, tenant, {domain_of(a) for a in rest})
    for address in rest:
        company_id = owners.get(domain_of(address))
        if company_id is not None:
            result[address] = Match(address, PartyKind.COMPANY, company_id=company_id)
        else:
            result[address] = Match(address, PartyKind.UNMATCHED)
    return result


def company_owners(session: Session, tenant: Tenant, domains: set[str]) -> dict[str, int]:
    """Domain → company, only where exactly one company of the tenant owns the domain."""
    candidates = sorted(domains - free_mail_domains())
    if not candidates:
        return {}
    owners: dict[str, set[int]] = {}
    for domain, company_id in session.connection().execute(
        _COMPANY_DOMAINS, {"tenant_id": tenant.id, "domains": candidates}
    ):
        owners.setdefault(domain, set()).add(company_id)
    return {domain: ids.pop() for domain, ids in owners.items() if len(ids) == 1}


def never_log_hits(
    session: Session, tenant: Tenant, staff_ids: set[int], addresses: list[str]
) -> list[str]:
    """The parties that the tenant's or these staff members' never-log lists name."""
    rows = (
        session.connection()
        .execute(_NEVER_LOG, {"tenant_id": tenant.id, "staff": sorted(staff_ids)})
        .scalars()
        .all()
    )
    return never_log_matches(rows, addresses)


def never_log_rules(session: Session, tenant: Tenant) -> list[tuple[str, int | None]]:
    """Every never-log pattern of the tenant and its staff, with the staff member it is for.

    Processing reads them once per batch and picks each message's staff from them
    (``never_log_matches``) rather than asking again for every message.
    """
    rows = session.connection().execute(_ALL_NEVER_LOG, {"tenant_id": tenant.id})
    return [(pattern, staff_id) for pattern, staff_id in rows]


def never_log_matches(patterns: Iterable[str], addresses: list[str]) -> list[str]:
    """The addresses that a never-log pattern (an address, or a domain and its subdomains) names."""
    wanted = {p.lower() for p in patterns}
    if not wanted:
        return []
    hits = []
    for address in addresses:
        domain = domain_of(address)
        labels = domain.split(".")
        parents = {".".join(labels[i:]) for i in range(len(labels) - 1)}
        if address in wanted or parents & wanted:
            hits.append(address)
    return hits
