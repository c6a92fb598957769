"""Who our own mail to a tenant's staff comes from: one choice for every system mail.

Sign-in links, alerts and account-status mails come from ``[service] system_address``
(``noreply@<hostname>`` when unset) unless the tenant chose one of its staff addresses
(``mailledger tenant set TENANT --system-sender ADDRESS``), so its staff see mail from their
own company. A chosen address is used only while its domain's DKIM key is verified: mail from
the customer's domain that its own DKIM does not vouch for is the kind receivers reject under
DMARC, and a sign-in link that never arrives locks people out. So the choice is refused until
the live check (``domains.check.check_dkim``, the one ``mailledger dns check`` runs) sees the
key published, and falls back to the service's address if the key is later retired.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.config import ServiceSettings, Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.check import RecordCheck, check_dkim
from mailledger.domains.signing import active_key
from mailledger.mail.addresses import AddressError, domain_of, normalize
from mailledger.store.directory import DirectoryError
from mailledger.store.models import CustomerDomain, Staff, StaffAddress, Tenant

DEFAULT = "default"  # what `--system-sender` takes to go back to [service] system_address


class SystemSenderError(DirectoryError):
    """A system sender that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class SystemSender:
    """The address system mail goes out from, and whose choice it is."""

    address: str
    # The tenant whose DKIM key signs it: the tenant's own choice signs with that tenant's
    # verified key; [service]'s address is signed only if some key covers its domain.
    tenant_id: int | None
    chosen: bool  # True: the tenant's chosen address; False: [service] system_address

    @property
    def domain(self) -> str:
        """The domain signing and the envelope use."""
        return domain_of(self.address)


def system_sender(
    session: Session, tenant_id: int | None, service: ServiceSettings
) -> SystemSender:
    """The sender of system mail to the staff of ``tenant_id`` (None: no tenant).

    The tenant's chosen address while it is still one of its staff's verified addresses and
    its domain's active DKIM key is verified; ``[service]``'s system address otherwise.
    """
    fallback = SystemSender(service.system_sender, tenant_id, chosen=False)
    if tenant_id is None:
        return fallback
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or not tenant.system_sender:
        return fallback
    address = tenant.system_sender
    if _staff_address(session, tenant, address) is None:
        return fallback
    key = active_key(session, tenant.id, domain_of(address))
    if key is None or key.verified_at is None or key.retired_at is not None:
        return fallback
    return SystemSender(address, tenant.id, chosen=True)


def set_system_sender(
    session: Session, tenant: Tenant, value: str, settings: Settings, resolver: Resolver
) -> list[RecordCheck]:
    """Make ``value`` the tenant's system sender, or ``default`` to use ``[service]``'s.

    Refused (``SystemSenderError``) unless it is a verified address of one of the tenant's
    staff, on one of its customer domains, whose DKIM key the live check finds published.
    Returns the DKIM verdicts that allowed it (none for ``default``).
    """
    text = value.strip()
    if text.lower() in (DEFAULT, ""):
        tenant.system_sender = ""
        session.flush()
        return []
    try:
        address = normalize(text)
    except AddressError as exc:
        raise SystemSenderError(f"--system-sender: {exc}") from exc
    if _staff_address(session, tenant, address) is None:
        raise SystemSenderError(
            f"{address} is not a verified address of a staff member of tenant {tenant.name!r}: "
            f"give it to one with `mailledger staff set {tenant.name} USERNAME --add-address "
            f"{address}`"
        )
    domain = domain_of(address)
    owned = session.scalars(
        select(CustomerDomain).where(
            CustomerDomain.tenant_id == tenant.id,
            CustomerDomain.domain == domain,
            CustomerDomain.verified.is_(True),
        )
    ).first()
    if owned is None:
        raise SystemSenderError(
            f"{domain} is not a verified customer domain of tenant {tenant.name!r}: system mail "
            "is sent only as a domain the tenant owns and signs for"
        )
    checks, usable = check_dkim(session, tenant, domain, resolver)
    if not usable:
        problems = "; ".join(f"{c.name}: {c.reason}" for c in checks if not c.ok) or "not verified"
        fixes = "".join(f"\n  {c.fix}" for c in checks if c.fix)
        publish = f"\npublish:{fixes}" if fixes else ""
        raise SystemSenderError(
            f"refused: the DKIM key of {domain} is not published and verified ({problems}); "
            f"system mail from {address} would fail DMARC at receivers.{publish}\n"
            f"then run `mailledger dns check {tenant.name}` and set it again"
        )
    tenant.system_sender = address
    session.flush()
    return checks


def _staff_address(session: Session, tenant: Tenant, address: str) -> StaffAddress | None:
    """The verified address of a current staff member of ``tenant``, if ``address`` is one."""
    return session.scalars(
        select(StaffAddress)
        .join(Staff, Staff.id == StaffAddress.staff_id)
        .where(
            StaffAddress.tenant_id == tenant.id,
            StaffAddress.address == address,
            StaffAddress.verified.is_(True),
            Staff.removed_at.is_(None),
        )
    ).first()
