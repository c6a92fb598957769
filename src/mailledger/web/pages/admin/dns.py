"""``/admin/dns``: the records the tenant publishes, per domain, and the live check.

The records are ``dns records TENANT``'s and the check is ``dns check TENANT``'s
(``domains.records.tenant_records``, ``domains.check.check_tenant``), both run in the thread
pool: they wait on DNS, and the event loop serves SMTP too. The check gets a fresh resolver,
as the API's does, so a record fixed a minute ago is not hidden behind a cached answer; it
is also how a DKIM key becomes verified, so it runs in a write transaction.

The last check of each domain is kept in the database (``store.dnschecks``), whichever way it
ran (this page, ``dns check``, ``POST /v1/dns/check``), and shown per domain with when and by
what: a restart or another node shows the same, and so does a check run from the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.check import RecordCheck, all_ok, check_tenant, lookup_failure_summary
from mailledger.domains.records import Publish, tenant_records
from mailledger.store.dnschecks import RESULT_KEYS, CheckedBy, LastCheck, last_checks, record_check
from mailledger.store.models import Staff, Tenant
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.forms import page, posted, refused
from mailledger.web.pages.admin.guard import admin_only
from mailledger.web.pages.admin.times import when
from mailledger.web.pages.site import pages_of

# What the page says about a record whose lookup failed (time-out, SERVFAIL).
UNANSWERED = "DNS did not answer; nothing known to be wrong"


def checked_by(last: LastCheck) -> str:
    """Who or what ran a check, in the words that follow "by"."""
    if last.checked_by is CheckedBy.PAGE:
        return f"{last.actor} on this page" if last.actor else "this page"
    if last.checked_by is CheckedBy.API:
        return f"the API (token {last.actor})" if last.actor else "the API"
    return "the command line (mailledger dns check)"


@dataclass(frozen=True, slots=True)
class Checked:
    """One domain's last check as the page shows it: when, by what, each record's verdict."""

    at: str
    by: str
    results: tuple[RecordCheck, ...]

    @classmethod
    def of(cls, last: LastCheck) -> Checked:
        """The stored check, its verdicts as the live check gives them."""
        results = tuple(RecordCheck(**{k: r[k] for k in RESULT_KEYS}) for r in last.results)
        return cls(when(last.checked_at), checked_by(last), results)


@dataclass(frozen=True, slots=True)
class Overview:
    """The newest check of any domain, and every domain's verdicts together, for the top line."""

    at: str
    by: str
    results: tuple[RecordCheck, ...]
    summary: str  # what to do when DNS itself failed; "" otherwise

    @property
    def ok(self) -> bool:
        """Every record is right."""
        return all_ok(self.results)

    @property
    def to_fix(self) -> int:
        """Records known to need a DNS change (not those DNS did not answer for)."""
        return sum(1 for r in self.results if not r.ok and not r.lookup_failed)


def _owner(name: str, domains: list[str]) -> str:
    """The most specific of ``domains`` that ``name`` is, or lies under."""
    name = name.lower().rstrip(".")
    under = [d for d in domains if name == d or name.endswith("." + d)]
    return max(under, key=len) if under else ""


@dataclass(slots=True)
class Section:
    """One domain on the page: the records to publish there, and its last check's verdicts."""

    domain: str
    role: str  # customer domain, capture domain
    records: list[Publish] = field(default_factory=list)
    checked: Checked | None = None

    @property
    def checks(self) -> tuple[RecordCheck, ...]:
        """The last check's verdicts; none when the domain was never checked."""
        return self.checked.results if self.checked else ()


def by_domain(
    tenant: Tenant, records: list[Publish], last: Mapping[str, LastCheck]
) -> list[Section]:
    """The page's sections: each customer domain, then the capture domain, with what is for it.

    A record belongs to the domain it is named under (``sel._domainkey.d``, ``_dmarc.d``);
    a domain's last check is kept under its name.
    """
    domains = sorted(d.domain for d in tenant.customer_domains)
    sections = [Section(d, "customer domain") for d in domains]
    capture = Section(tenant.capture_domain, "capture domain")
    index = {s.domain: s for s in sections}
    for record in records:
        owner = capture if record.kind == "mx" else index.get(_owner(record.name, domains))
        (owner or capture).records.append(record)
    every = [*sections, capture]
    for section in every:
        found = last.get(section.domain)
        section.checked = Checked.of(found) if found else None
    return every


def overview(
    sections: Sequence[Section], last: Mapping[str, LastCheck], site: Settings
) -> Overview | None:
    """The top line: the newest check shown, and what all shown verdicts add up to."""
    shown = [last[s.domain] for s in sections if s.domain in last]
    if not shown:
        return None
    newest = max(shown, key=lambda c: c.checked_at)
    results = tuple(r for s in sections for r in s.checks)
    return Overview(
        when(newest.checked_at),
        checked_by(newest),
        results,
        lookup_failure_summary(results, site),
    )


def _records(session: Session, tenant_id: int, site: Settings) -> tuple[Tenant, list[Publish]]:
    tenant = session.get_one(Tenant, tenant_id)
    return tenant, tenant_records(session, tenant, site, Resolver(site.dns))


async def _show(request: Request, identity: WebIdentity, *, just_checked: bool) -> Response:
    site = pages_of(request).settings

    def read(session: Session) -> dict[str, Any]:
        tenant, records = _records(session, identity.tenant_id, site)
        last = last_checks(session, tenant.id)
        sections = by_domain(tenant, records, last)
        return {
            "tenant": tenant.name,
            "sections": sections,
            "last": overview(sections, last, site),
        }

    values = await pages_of(request).read(read)
    return page(
        request,
        identity,
        "admin/dns.html",
        just_checked=just_checked,
        unanswered=UNANSWERED,
        **values,
    )


@admin_only
async def dns_page(request: Request, identity: WebIdentity) -> Response:
    """The records to publish, and each domain's last check (from any node, CLI or API)."""
    return await _show(request, identity, just_checked=False)


@admin_only
async def dns_check(request: Request, identity: WebIdentity) -> Response:
    """Look every record up now (``dns check``), keep it, and show what is right and what to fix."""
    if await posted(request, identity) is None:
        return refused(request)
    site = pages_of(request).settings

    def check(session: Session) -> None:
        tenant = session.get_one(Tenant, identity.tenant_id)
        results = check_tenant(session, tenant, site, Resolver(site.dns))
        staff = session.get_one(Staff, identity.staff_id)
        record_check(
            session,
            tenant.id,
            [r.as_dict() for r in results],
            by=CheckedBy.PAGE,
            actor=staff.username,
        )

    await pages_of(request).write(check)
    return await _show(request, identity, just_checked=True)


ROUTES = [
    Route("/admin/dns", dns_page, methods=["GET"]),
    Route("/admin/dns/check", dns_check, methods=["POST"]),
]
