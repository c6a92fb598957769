"""``/v1/dns``: the records the tenant publishes, and their live check (``dns records|check``).

Both need the whole configuration (the SPF include, the MX host, ``[dns]``), which the app
gets as ``site``; without it these answer 503. The check runs in the thread pool with a fresh
resolver on ``[dns] nameservers`` (a cached answer would hide a record just fixed), and tells
"a record is wrong" (200, ``ok: false``) from "DNS failed" (502), as ``dns check`` exits 1 or 2.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.check import RecordCheck, all_ok, check_tenant, lookup_failures
from mailledger.domains.records import tenant_records
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

    def records(session: Session) -> list[dict[str, Any]]:
        tenant = tenant_row(session, identity.tenant_id)
        found = tenant_records(session, tenant, site, Resolver(site.dns))
        return [{**r.as_dict(), "zone": r.zone()} for r in found]

    return JSONResponse({"data": await context_of(request).read(records)})


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
        return check_tenant(
            session, tenant, site, Resolver(site.dns), domains=domains, capture=domain is None
        )

    results = await context_of(request).write(check)
    data = [r.as_dict() for r in results]
    failed = lookup_failures(results)
    if failed:
        servers = ", ".join(site.dns.nameservers) or "the system resolver"
        body = {
            "type": TYPE_BASE + "dns-lookup-failed",
            "title": "DNS lookup failed",
            "status": 502,
            "detail": (
                f"DNS failed for {len(failed)} of {len(results)} record(s) (asking {servers}): "
                "they could not be checked, which says nothing about whether they are right; "
                "try again"
            ),
            "results": data,
        }
        return JSONResponse(body, status_code=502, media_type=PROBLEM_TYPE)
    return JSONResponse({"ok": all_ok(results), "data": data})


ROUTES = [
    Route("/v1/dns/records", dns_records, methods=["GET"]),
    Route("/v1/dns/check", dns_check, methods=["POST"]),
]
