"""``/v1/dns``: the records the tenant publishes, and their live check (``dns records|check``).

Both need the whole configuration (the SPF include, the MX host, ``[dns]``), which the app
gets as ``site``; without it these answer 503. The check runs in the thread pool with a fresh
resolver on ``[dns] nameservers`` (a cached answer would hide a record just fixed), and tells
"a record is wrong" (200, ``ok: false``) from "DNS failed" (502), as ``dns check`` exits 1 or 2.
Every check is kept as each domain's last check (``store.dnschecks``, as the CLI's and the DNS
page's are), and the records list carries it per domain as ``last_check``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.check import RecordCheck, all_ok, check_tenant, lookup_failure_summary
from mailledger.domains.records import tenant_records
from mailledger.store.dnschecks import CheckedBy, last_checks, record_check
from mailledger.store.models import ApiToken, Tenant
from mailledger.web.api.common import only_params, tenant_row
from mailledger.web.auth import identify
from mailledger.web.context import context_of
from mailledger.web.problems import PROBLEM_TYPE, TYPE_BASE, ProblemError


def _site(request: Request) -> Settings:
    site: Settings | None = getattr(request.app.state, "site", None)
    if site is None:
        raise ProblemError(503, "DNS answers need the server's whole configuration, not given")
    return site


async def dns_records(request: Request) -> Response:
    """What the tenant's DNS admin publishes (SPF merged with the current record, DKIM, DMARC)."""
    identity = await identify(request)
    only_params(request, set())
    site = _site(request)

    def records(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        found = tenant_records(session, tenant, site, Resolver(site.dns))
        return {
            "data": [{**r.as_dict(), "zone": r.zone()} for r in found],
            "domains": _domains(session, tenant),
        }

    return JSONResponse(await context_of(request).read(records))


def _domains(session: Session, tenant: Tenant) -> list[dict[str, Any]]:
    """Each customer domain, then the capture domain, with its last check (or null)."""
    last = last_checks(session, tenant.id)
    named = [
        (d.domain, "customer") for d in sorted(tenant.customer_domains, key=lambda d: d.domain)
    ]
    named.append((tenant.capture_domain, "capture"))
    return [
        {
            "domain": domain,
            "role": role,
            "last_check": last[domain].as_dict() if domain in last else None,
        }
        for domain, role in named
    ]


async def dns_check(request: Request) -> Response:
    """Look every record up now; ``?domain=`` only one customer domain's (and not the MX)."""
    identity = await identify(request)
    params = only_params(request, {"domain"})
    site = _site(request)
    domain = params.get("domain", "").strip().lower().rstrip(".") or None

    def check(session: Session) -> list[RecordCheck]:
        tenant = tenant_row(session, identity.tenant_id)
        if domain is not None and domain not in {d.domain for d in tenant.customer_domains}:
            raise ProblemError(
                422, f"domain: {domain} is not a customer domain of this tenant", field="domain"
            )
        domains = None if domain is None else [domain]
        # A write: a check that finds a DKIM key published marks it verified, as the CLI's does.
        results = check_tenant(
            session, tenant, site, Resolver(site.dns), domains=domains, capture=domain is None
        )
        token = session.get_one(ApiToken, identity.token_id)
        record_check(
            session,
            tenant.id,
            [r.as_dict() for r in results],
            by=CheckedBy.API,
            actor=token.name or f"{token.prefix}…",
        )
        return results

    results = await context_of(request).write(check)
    data = [r.as_dict() for r in results]
    failed = lookup_failure_summary(results, site)
    if failed:
        body = {
            "type": TYPE_BASE + "dns-lookup-failed",
            "title": "DNS lookup failed",
            "status": 502,
            "detail": failed,
            "results": data,
        }
        return JSONResponse(body, status_code=502, media_type=PROBLEM_TYPE)
    return JSONResponse({"ok": all_ok(results), "data": data})


ROUTES = [
    Route("/v1/dns/records", dns_records, methods=["GET"]),
    Route("/v1/dns/check", dns_check, methods=["POST"]),
]
