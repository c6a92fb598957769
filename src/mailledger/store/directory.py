"""Tenants, staff, contacts, companies and never-log entries: adding, changing, disabling.

The rules the CLI, the demo and the HTTP API share (DESIGN §11: one function behind every
door). What the operator adds here counts as verified (DESIGN §4: the operator's CLI is
trusted). Removal with or without history is in ``mailledger.store.removal``.
"""

from __future__ import annotations

import csv
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.mail.addresses import (
    LOG_LOCAL_PART,
    AddressError,
    fold_local,
    normalize,
    parse_address,
)
from mailledger.mail.freemail import free_mail_domains
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


def find_staff(
    session: Session, tenant: Tenant, username: str, *, include_removed: bool = False
) -> Staff:
    """A staff member of a tenant by username.

    A removed member (kept only as the name on the kept history) is not found unless
    ``include_removed``: nothing can be done to him but show him, and the refusal says when
    he was removed, so a second ``staff remove`` is a clear error.
    """
    staff = session.scalars(
        select(Staff).where(Staff.tenant_id == tenant.id, Staff.username == fold_local(username))
    ).one_or_none()
    if staff is None:
        raise DirectoryError(f"tenant {tenant.name!r} has no staff member {username!r}")
    if staff.removed_at is not None and not include_removed:
        raise DirectoryError(
            f"staff member {staff.username!r} of tenant {tenant.name!r} was removed on "
            f"{staff.removed_at:%Y-%m-%d} (the history was kept)"
        )
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
    username = fold_local(username.strip())
    if not username or len(username) > 64 or any(c in username for c in '@+ \t,;<>"\\'):
        raise DirectoryError(f"{username!r} cannot be a capture address's local part")
    if username in RESERVED_USERNAMES:
        raise DirectoryError(f"{username!r} is reserved; choose another username")
    if not addresses:
        raise DirectoryError("a staff member needs at least one --address")
    exists = session.scalars(
        select(Staff).where(Staff.tenant_id == tenant.id, Staff.username == username)
    ).first()
    if exists is not None and exists.removed_at is not None:
        raise DirectoryError(
            f"{username!r} was a staff member of tenant {tenant.name!r}, removed with the "
            "history kept: the name stays on those activities; choose another username"
        )
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
        domain = _domain(value.lstrip("@"))
        if domain not in known:
            session.add(CompanyDomain(company_id=company.id, tenant_id=tenant.id, domain=domain))
            known.add(domain)
    session.flush()
    # The rows were added beside the loaded collection: read it again when next asked.
    session.expire(company, ["domains"])
    return company


def create_company(session: Session, tenant: Tenant, name: str, domains: list[str]) -> Company:
    """``add_company`` as operators and the API reach it: a free-mail domain is refused.

    ``add_company`` itself stays the plain write (rows made before this rule exist, and party
    matching ignores free-mail domains on its own, ``routing.matcher``).
    """
    _refuse_free_mail(domains)
    return add_company(session, tenant, name, domains)


class CompanyExistsError(DirectoryError):
    """A new company was asked for under a name the tenant already uses (the API: 409)."""


def add_new_company(session: Session, tenant: Tenant, name: str, domains: list[str]) -> Company:
    """``create_company`` for a company that must not exist yet (the API and the admin page).

    ``company add`` in the CLI may extend an existing company; a form or a ``POST`` that
    names one already there is more likely a mistake than a wish to merge.
    """
    clash = session.scalars(
        select(Company).where(Company.tenant_id == tenant.id, Company.name == name.strip())
    ).first()
    if clash is not None:
        raise CompanyExistsError(f"the tenant already has a company {name.strip()!r}")
    return create_company(session, tenant, name, domains)


def _refuse_free_mail(domains: Iterable[str]) -> None:
    for value in domains:
        domain = _domain(value.lstrip("@"))
        if domain in free_mail_domains():
            raise DirectoryError(
                f"{domain} is a free-mail domain: anyone can have an address there, so it "
                "cannot name a company (add the person as a contact with --company instead)"
            )


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
    normalized = _never_log_pattern(tenant, pattern)
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
    """What a contact import did: rows imported, and each refused row's line and reason.

    In a dry run ``imported`` counts the rows that would have gone in.
    """

    imported: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    dry_run: bool = False


CSV_COLUMNS = ("email", "name", "company")
IMPORT_BATCH_ROWS = 500


def import_contacts(
    sessions: sessionmaker[Session],
    tenant_name: str,
    lines: Iterable[str],
    *,
    batch_rows: int = IMPORT_BATCH_ROWS,
    dry_run: bool = False,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import contacts from CSV (``email``, ``name``, ``company``; more addresses after ``;``).

    Each row is its own savepoint, so a bad row is reported with its line number and the rest
    still go in; rows are committed in batches so a large file neither holds one transaction
    open for its whole length nor pays a commit per row. ``dry_run`` runs every check and
    rolls each batch back, so nothing is written; addresses seen in earlier batches are
    remembered, so a duplicate across batches is found all the same. ``progress`` is called
    after each batch.
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
    report = ImportReport(dry_run=dry_run)
    # Only a dry run needs to remember addresses: a real import finds them in the database.
    seen: set[str] | None = set() if dry_run else None
    rows = iter(reader)
    done = False
    while not done:
        with sessions() as session, session.begin() as transaction:
            tenant = find_tenant(session, tenant_name)
            for _ in range(batch_rows):
                row = next(rows, None)
                if row is None:
                    done = True
                    break
                line = reader.line_num
                try:
                    _import_row(session, tenant, row, seen)
                except (DirectoryError, AddressError) as exc:
                    report.errors.append((line, str(exc)))
                else:
                    report.imported += 1
            if dry_run:
                transaction.rollback()
        if progress is not None:
            progress(report)
    return report


def _import_row(
    session: Session, tenant: Tenant, row: dict[str | Any, str | Any], seen: set[str] | None
) -> None:
    if None in row:
        raise DirectoryError("more fields than the header has columns")
    addresses = [a.strip() for a in (row.get("email") or "").split(";") if a.strip()]
    normalized = {_address(value, strip_plus=tenant.strip_plus_tags) for value in addresses}
    if seen is not None and normalized & seen:
        address = min(normalized & seen)
        raise DirectoryError(f"{address} is already a contact of tenant {tenant.name!r}")
    with session.begin_nested():
        add_contact(
            session,
            tenant,
            addresses,
            name=(row.get("name") or "").strip(),
            company=(row.get("company") or "").strip() or None,
        )
    if seen is not None:
        seen |= normalized


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


# --- changing what exists ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantPolicies:
    """The tenant's switches (DESIGN §2, §5); ``None`` leaves a switch as it is."""

    create_unknown_contacts: bool | None = None
    record_internal: bool | None = None
    strip_plus_tags: bool | None = None


def set_tenant_policies(session: Session, tenant: Tenant, policies: TenantPolicies) -> list[str]:
    """Change the tenant's policies; the names of the switches that changed.

    ``strip_plus_tags`` governs how mail's addresses are matched and new ones stored from now
    on; contact addresses already stored keep the form they were stored in.
    """
    changed = []
    for name in ("create_unknown_contacts", "record_internal", "strip_plus_tags"):
        value = getattr(policies, name)
        if value is not None and getattr(tenant, name) != value:
            setattr(tenant, name, value)
            changed.append(name)
    session.flush()
    return changed


def _set_disabled(session: Session, record: Tenant | Staff, disabled: bool) -> bool:
    """Set or clear ``disabled_at``; False when the record already was in that state."""
    if (record.disabled_at is not None) == disabled:
        return False
    record.disabled_at = utcnow() if disabled else None
    session.flush()
    return True


def disable_tenant(session: Session, tenant: Tenant) -> bool:
    """Refuse every capture address of the tenant at RCPT; False when it already was."""
    return _set_disabled(session, tenant, disabled=True)


def enable_tenant(session: Session, tenant: Tenant) -> bool:
    """Accept the tenant's capture addresses again; False when it was not disabled."""
    return _set_disabled(session, tenant, disabled=False)


def disable_staff(session: Session, staff: Staff) -> bool:
    """Refuse the staff member's capture address at RCPT (550 5.1.1); False if already so.

    Nothing else changes: his activities, addresses and relay password stay, and ``enable``
    undoes it.
    """
    return _set_disabled(session, staff, disabled=True)


def enable_staff(session: Session, staff: Staff) -> bool:
    """Accept the staff member's capture address again; False when it was not disabled."""
    return _set_disabled(session, staff, disabled=False)


def set_admin(session: Session, staff: Staff, admin: bool) -> bool:
    """Make (or unmake) a tenant admin, whose web session sees the whole tenant (DESIGN §11).

    False when the staff member already was (or was not) one. ``staff set --admin``, the API
    and the admin pages all come here.
    """
    if staff.admin == admin:
        return False
    staff.admin = admin
    session.flush()
    return True


MAX_SIGNATURE_CHARS = 10_000  # a signature, not a newsletter: bounded like every input


def set_signature(
    session: Session, staff: Staff, *, text: str | None = None, html: str | None = None
) -> None:
    """Set (or with "" clear) the signature added below mail sent with ``POST /v1/messages``.

    ``staff set --signature-file``/``--signature-html-file`` and the staff API come here.
    """
    for field_name, value in (("signature_text", text), ("signature_html", html)):
        if value is None:
            continue
        if len(value) > MAX_SIGNATURE_CHARS:
            raise DirectoryError(f"{field_name}: longer than {MAX_SIGNATURE_CHARS} characters")
        if "\0" in value:
            raise DirectoryError(f"{field_name}: holds a NUL character")
        cleaned = value.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
        setattr(staff, field_name, cleaned)
    session.flush()


def refuse_last_admin(session: Session, staff: Staff, doing: str) -> None:
    """Refuse ``doing`` (unmake, disable, remove) when ``staff`` is the tenant's last admin.

    A tenant admin acting on the web pages must not lock the tenant out of them. The operator's
    CLI and the API do not ask: the operator is how a tenant without an admin gets one.
    """
    if not staff.admin or staff.disabled_at is not None or staff.removed_at is not None:
        return
    others = session.scalar(
        select(func.count())
        .select_from(Staff)
        .where(
            Staff.tenant_id == staff.tenant_id,
            Staff.id != staff.id,
            Staff.admin.is_(True),
            Staff.disabled_at.is_(None),
            Staff.removed_at.is_(None),
        )
    )
    if not others:
        raise DirectoryError(
            f"{staff.username} is the tenant's only admin: make another staff member an admin "
            f"before you {doing} {staff.username}"
        )


def set_staff(
    session: Session,
    staff: Staff,
    *,
    name: str | None = None,
    primary: str | None = None,
    add_addresses: Iterable[str] = (),
    remove_addresses: Iterable[str] = (),
) -> None:
    """Change a staff member's name, primary address or own addresses.

    At least one own address must stay: it is how his own mail is recognised as staff mail.
    """
    if name is not None:
        staff.name = name.strip()
    for value in add_addresses:
        add_staff_address(session, staff, value)
    for value in remove_addresses:
        address = _address(value)
        row = session.scalars(
            select(StaffAddress).where(
                StaffAddress.staff_id == staff.id, StaffAddress.address == address
            )
        ).one_or_none()
        if row is None:
            raise DirectoryError(f"{address} is not one of {staff.username}'s addresses")
        session.delete(row)
    session.flush()
    left = session.scalar(
        select(func.count()).select_from(StaffAddress).where(StaffAddress.staff_id == staff.id)
    )
    if not left:
        raise DirectoryError(f"{staff.username} must keep at least one own address")
    if primary is not None:
        try:
            staff.primary_address = parse_address(primary).address
        except AddressError as exc:
            raise DirectoryError(str(exc)) from exc
    session.flush()


def find_contact(session: Session, tenant: Tenant, ref: str) -> Contact:
    """A contact of the tenant by id or by one of its addresses."""
    text = ref.strip()
    contact: Contact | None = None
    if text.isdigit():
        contact = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant.id, Contact.id == int(text))
        ).one_or_none()
    else:
        address = _address(text, strip_plus=tenant.strip_plus_tags)
        contact = session.scalars(
            select(Contact)
            .join(ContactAddress, ContactAddress.contact_id == Contact.id)
            .where(ContactAddress.tenant_id == tenant.id, ContactAddress.address == address)
        ).one_or_none()
    if contact is None:
        raise DirectoryError(f"tenant {tenant.name!r} has no contact {ref!r}")
    return contact


def set_contact(
    session: Session,
    tenant: Tenant,
    contact: Contact,
    *,
    name: str | None = None,
    company: str | None = None,
    add_addresses: Iterable[str] = (),
    remove_addresses: Iterable[str] = (),
) -> None:
    """Change a contact's name, company (``""`` takes it out of its company) or addresses."""
    if name is not None:
        contact.name = name.strip()
    if company is not None:
        contact.company_id = add_company(session, tenant, company, []).id if company else None
    for value in add_addresses:
        address = _address(value, strip_plus=tenant.strip_plus_tags)
        taken = session.scalars(
            select(ContactAddress).where(
                ContactAddress.tenant_id == tenant.id, ContactAddress.address == address
            )
        ).first()
        if taken is not None:
            raise DirectoryError(f"{address} is already a contact of tenant {tenant.name!r}")
        session.add(ContactAddress(contact_id=contact.id, tenant_id=tenant.id, address=address))
    for value in remove_addresses:
        address = _address(value, strip_plus=tenant.strip_plus_tags)
        row = session.scalars(
            select(ContactAddress).where(
                ContactAddress.contact_id == contact.id, ContactAddress.address == address
            )
        ).one_or_none()
        if row is None:
            raise DirectoryError(f"{address} is not an address of contact {contact.id}")
        session.delete(row)
    session.flush()
    left = session.scalar(
        select(func.count())
        .select_from(ContactAddress)
        .where(ContactAddress.contact_id == contact.id)
    )
    if not left:
        raise DirectoryError(
            f"contact {contact.id} must keep at least one address (remove the contact instead)"
        )
    session.expire(contact, ["addresses", "company"])


def find_company(session: Session, tenant: Tenant, ref: str) -> Company:
    """A company of the tenant by id or name."""
    text = ref.strip()
    condition = Company.id == int(text) if text.isdigit() else Company.name == text
    company = session.scalars(
        select(Company).where(Company.tenant_id == tenant.id, condition)
    ).one_or_none()
    if company is None:
        raise DirectoryError(f"tenant {tenant.name!r} has no company {ref!r}")
    return company


def set_company(
    session: Session,
    tenant: Tenant,
    company: Company,
    *,
    name: str | None = None,
    add_domains: Iterable[str] = (),
    remove_domains: Iterable[str] = (),
) -> None:
    """Rename a company, or give it or take away domains."""
    if name is not None and name.strip() != company.name:
        if not name.strip():
            raise DirectoryError("a company needs a name")
        clash = session.scalars(
            select(Company).where(Company.tenant_id == tenant.id, Company.name == name.strip())
        ).first()
        if clash is not None:
            raise DirectoryError(f"tenant {tenant.name!r} already has a company {name!r}")
        company.name = name.strip()
    create_company(session, tenant, company.name, list(add_domains))
    for value in remove_domains:
        domain = _domain(value.lstrip("@"))
        row = session.scalars(
            select(CompanyDomain).where(
                CompanyDomain.company_id == company.id, CompanyDomain.domain == domain
            )
        ).one_or_none()
        if row is None:
            raise DirectoryError(f"{domain} is not a domain of company {company.name!r}")
        session.delete(row)
    session.flush()
    session.expire(company, ["domains"])


def remove_company(session: Session, company: Company) -> int:
    """Delete a company and its domains; its contacts stay, without a company. How many."""
    contacts = session.scalars(select(Contact).where(Contact.company_id == company.id)).all()
    for contact in contacts:
        contact.company_id = None
    session.flush()
    session.delete(company)
    session.flush()
    return len(contacts)


def _never_log_pattern(tenant: Tenant, pattern: str) -> str:
    value = pattern.strip()
    if "@" in value.lstrip("@"):
        return _address(value, strip_plus=tenant.strip_plus_tags)
    return _domain(value.lstrip("@"))


def remove_never_log(
    session: Session, tenant: Tenant, pattern: str, *, staff: Staff | None = None
) -> str:
    """Take an address or domain off the tenant's (or one staff member's) never-log list."""
    normalized = _never_log_pattern(tenant, pattern)
    row = session.scalars(
        select(NeverLog).where(
            NeverLog.tenant_id == tenant.id,
            NeverLog.staff_id.is_(None) if staff is None else NeverLog.staff_id == staff.id,
            NeverLog.pattern == normalized,
        )
    ).one_or_none()
    if row is None:
        scope = f"staff member {staff.username}'s" if staff else f"tenant {tenant.name}'s"
        raise DirectoryError(f"{normalized} is not on {scope} never-log list")
    session.delete(row)
    session.flush()
    return normalized
