"""Adding tenants, staff, contacts and companies: the rules the CLI and the demo share.

What the operator adds here counts as verified (DESIGN §4: the operator's CLI is trusted).
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.mail.addresses import LOG_LOCAL_PART, AddressError, normalize, parse_address
from mailledger.store.models import (
    Company,
    CompanyDomain,
    Contact,
    ContactAddress,
    CustomerDomain,
    NeverLog,
    Staff,
    StaffAddress,
    Tenant,
    utcnow,
)

# Local parts that are never a staff member's capture address: our log address, and the
# role addresses RFC 2142 and RFC 5321 §4.5.1 reserve.
RESERVED_USERNAMES = frozenset({LOG_LOCAL_PART, "postmaster", "abuse", "mailer-daemon"})


class DirectoryError(ValueError):
    """A directory change that cannot be made; the message says what to fix."""


def _domain(value: str) -> str:
    try:
        return parse_address(f"x@{value.strip().lower()}").domain
    except AddressError as exc:
        raise DirectoryError(f"{value!r} is not a domain name") from exc


def _address(value: str, *, strip_plus: bool = True) -> str:
    try:
        return normalize(value, strip_plus=strip_plus)
    except AddressError as exc:
        raise DirectoryError(str(exc)) from exc


def find_tenant(session: Session, name_or_domain: str) -> Tenant:
    """A tenant by name or capture domain."""
    key = name_or_domain.strip().lower()
    tenant = session.scalars(
        select(Tenant).where((func.lower(Tenant.name) == key) | (Tenant.capture_domain == key))
    ).one_or_none()
    if tenant is None:
        raise DirectoryError(f"no tenant named {name_or_domain!r}")
    return tenant


def find_staff(session: Session, tenant: Tenant, username: str) -> Staff:
    """A staff member of a tenant by username."""
    staff = session.scalars(
        select(Staff).where(Staff.tenant_id == tenant.id, Staff.username == username.lower())
    ).one_or_none()
    if staff is None:
        raise DirectoryError(f"tenant {tenant.name!r} has no staff member {username!r}")
    return staff


def add_tenant(
    session: Session, name: str, capture_domain: str, customer_domains: list[str] | None = None
) -> Tenant:
    """Create a tenant with its capture domain and (operator-verified) customer domains."""
    if not name.strip():
        raise DirectoryError("a tenant needs a name")
    domain = _domain(capture_domain)
    if session.scalars(select(Tenant).where(func.lower(Tenant.name) == name.lower())).first():
        raise DirectoryError(f"a tenant named {name!r} already exists")
    if session.scalars(select(Tenant).where(Tenant.capture_domain == domain)).first():
        raise DirectoryError(f"capture domain {domain} is already used by another tenant")
    tenant = Tenant(name=name.strip(), capture_domain=domain)
    session.add(tenant)
    session.flush()
    for value in customer_domains or []:
        add_customer_domain(session, tenant, value)
    return tenant


def add_customer_domain(session: Session, tenant: Tenant, value: str) -> CustomerDomain:
    """Add a domain the tenant sends as; added by the operator, so verified."""
    domain = _domain(value)
    owner = session.scalars(select(CustomerDomain).where(CustomerDomain.domain == domain)).first()
    if owner is not None:
        raise DirectoryError(f"customer domain {domain} already belongs to a tenant")
    row = CustomerDomain(tenant_id=tenant.id, domain=domain, verified=True, verified_at=utcnow())
    session.add(row)
    session.flush()
    return row


def add_staff(
    session: Session,
    tenant: Tenant,
    username: str,
    addresses: list[str],
    *,
    name: str = "",
    primary: str | None = None,
) -> Staff:
    """Create a staff member with their own addresses (each owned by one staff member only)."""
    username = username.strip().lower()
    if not username or len(username) > 64 or any(c in username for c in '@+ \t,;<>"\\'):
        raise DirectoryError(f"{username!r} cannot be a capture address's local part")
    if username in RESERVED_USERNAMES:
        raise DirectoryError(f"{username!r} is reserved; choose another username")
    if not addresses:
        raise DirectoryError("a staff member needs at least one --address")
    exists = session.scalars(
        select(Staff).where(Staff.tenant_id == tenant.id, Staff.username == username)
    ).first()
    if exists is not None:
        raise DirectoryError(f"tenant {tenant.name!r} already has a staff member {username!r}")
    # Check every address before writing anything, so a refusal leaves no half-made staff.
    for value in addresses:
        _check_staff_address_free(session, _address(value))
    primary_address = parse_address(primary or addresses[0]).address
    staff = Staff(
        tenant_id=tenant.id, username=username, name=name, primary_address=primary_address
    )
    session.add(staff)
    session.flush()
    for value in addresses:
        add_staff_address(session, staff, value)
    return staff


def add_staff_address(session: Session, staff: Staff, value: str) -> StaffAddress:
    """Give a staff member another own address; refused when anyone already owns it."""
    address = _address(value)
    _check_staff_address_free(session, address)
    row = StaffAddress(staff_id=staff.id, tenant_id=staff.tenant_id, address=address, verified=True)
    session.add(row)
    session.flush()
    return row


def _check_staff_address_free(session: Session, address: str) -> None:
    owner = session.scalars(select(StaffAddress).where(StaffAddress.address == address)).first()
    if owner is not None:
        raise DirectoryError(f"{address} already belongs to a staff member")


def add_company(session: Session, tenant: Tenant, name: str, domains: list[str]) -> Company:
    """Create a company, or add domains to an existing one of that name."""
    company = session.scalars(
        select(Company).where(Company.tenant_id == tenant.id, Company.name == name.strip())
    ).one_or_none()
    if company is None:
        if not name.strip():
            raise DirectoryError("a company needs a name")
        company = Company(tenant_id=tenant.id, name=name.strip())
        session.add(company)
        session.flush()
    known = {d.domain for d in company.domains}
    for value in domains:
        domain = _domain(value)
        if domain not in known:
            session.add(CompanyDomain(company_id=company.id, tenant_id=tenant.id, domain=domain))
            known.add(domain)
    session.flush()
    return company


def add_contact(
    session: Session,
    tenant: Tenant,
    addresses: list[str],
    *,
    name: str = "",
    company: str | None = None,
) -> Contact:
    """Create a contact with its addresses; an address is one contact's within a tenant."""
    if not addresses:
        raise DirectoryError("a contact needs an address")
    normalized = [_address(value, strip_plus=tenant.strip_plus_tags) for value in addresses]
    for address in normalized:
        taken = session.scalars(
            select(ContactAddress).where(
                ContactAddress.tenant_id == tenant.id, ContactAddress.address == address
            )
        ).first()
        if taken is not None:
            raise DirectoryError(f"{address} is already a contact of tenant {tenant.name!r}")
    company_row = add_company(session, tenant, company, []) if company else None
    contact = Contact(
        tenant_id=tenant.id, name=name, company_id=company_row.id if company_row else None
    )
    session.add(contact)
    session.flush()
    for address in dict.fromkeys(normalized):
        session.add(ContactAddress(contact_id=contact.id, tenant_id=tenant.id, address=address))
    session.flush()
    return contact


def add_never_log(
    session: Session, tenant: Tenant, pattern: str, *, staff: Staff | None = None
) -> NeverLog:
    """Never record mail with this address or domain, for the tenant or one staff member.

    A pattern with ``@`` is an address (normalized as contact addresses are); without, a
    domain (``example.com`` or ``@example.com``).
    """
    value = pattern.strip()
    if "@" in value.lstrip("@"):
        normalized = _address(value, strip_plus=tenant.strip_plus_tags)
    else:
        normalized = _domain(value.lstrip("@"))
    staff_id = staff.id if staff is not None else None
    taken = session.scalars(
        select(NeverLog).where(
            NeverLog.tenant_id == tenant.id,
            NeverLog.staff_id.is_(None) if staff_id is None else NeverLog.staff_id == staff_id,
            NeverLog.pattern == normalized,
        )
    ).first()
    if taken is not None:
        raise DirectoryError(f"{normalized} is already on that never-log list")
    row = NeverLog(tenant_id=tenant.id, staff_id=staff_id, pattern=normalized)
    session.add(row)
    session.flush()
    return row


@dataclass
class ImportReport:
    """What a contact import did: rows imported, and each refused row's line and reason."""

    imported: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


CSV_COLUMNS = ("email", "name", "company")
IMPORT_BATCH_ROWS = 500


def import_contacts(
    sessions: sessionmaker[Session],
    tenant_name: str,
    lines: Iterable[str],
    *,
    batch_rows: int = IMPORT_BATCH_ROWS,
) -> ImportReport:
    """Import contacts from CSV (``email``, ``name``, ``company``; more addresses after ``;``).

    Each row is its own savepoint, so a bad row is reported with its line number and the rest
    still go in; rows are committed in batches so a large file neither holds one transaction
    open for its whole length nor pays a commit per row.
    """
    reader = csv.DictReader(lines)
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "email" not in fields:
        raise DirectoryError(
            f"the CSV needs a header row with the columns {', '.join(CSV_COLUMNS)}"
        )
    unknown = sorted(set(fields) - set(CSV_COLUMNS))
    if unknown:
        raise DirectoryError(f"unknown CSV column(s): {', '.join(unknown)}")
    reader.fieldnames = fields
    report = ImportReport()
    rows = iter(reader)
    done = False
    while not done:
        with sessions.begin() as session:
            tenant = find_tenant(session, tenant_name)
            for _ in range(batch_rows):
                row = next(rows, None)
                if row is None:
                    done = True
                    break
                line = reader.line_num
                try:
                    _import_row(session, tenant, row)
                except (DirectoryError, AddressError) as exc:
                    report.errors.append((line, str(exc)))
                else:
                    report.imported += 1
    return report


def _import_row(session: Session, tenant: Tenant, row: dict[str | Any, str | Any]) -> None:
    if None in row:
        raise DirectoryError("more fields than the header has columns")
    addresses = [a.strip() for a in (row.get("email") or "").split(";") if a.strip()]
    with session.begin_nested():
        add_contact(
            session,
            tenant,
            addresses,
            name=(row.get("name") or "").strip(),
            company=(row.get("company") or "").strip() or None,
        )


def set_gateway(session: Session, tenant: Tenant, networks: list[str], authserv_id: str) -> None:
    """Trust a filtering MTA in front of us: its networks and the authserv-id it stamps.

    An empty list of networks removes the gateway.
    """
    parsed = []
    for value in networks:
        try:
            parsed.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError as exc:
            raise DirectoryError(f"{value!r} is not a network (e.g. 192.0.2.0/24)") from exc
    if parsed and not authserv_id.strip():
        raise DirectoryError("a gateway needs --authserv-id, the name its headers carry")
    tenant.gateway_networks = parsed
    tenant.gateway_authserv_id = authserv_id.strip().lower() if parsed else ""
    session.flush()
