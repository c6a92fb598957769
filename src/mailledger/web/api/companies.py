"""``/v1/companies``: contacts' companies and their domains (``company …`` in the CLI).

Same functions as the CLI: ``create_company`` refuses free-mail domains here as there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mailledger.store import directory, queries
from mailledger.store.directory import DirectoryError
from mailledger.store.models import Company
from mailledger.web.api.common import (
    invalid,
    json_object,
    list_field,
    not_found,
    only_params,
    path_id,
    tenant_row,
    text_field,
)
from mailledger.web.auth import identify, require_writer
from mailledger.web.context import context_of
from mailledger.web.problems import ProblemError


def _find(session: Session, tenant_id: int, company_id: int) -> Company:
    try:
        return directory.find_company(session, tenant_row(session, tenant_id), str(company_id))
    except DirectoryError as exc:
        raise not_found(exc) from exc


async def list_companies(request: Request) -> Response:
    """Every company of the tenant, by name, with its domains and contact count."""
    identity = await identify(request)
    only_params(request, set())

    def rows(session: Session) -> list[dict[str, Any]]:
        return queries.companies(session, tenant_row(session, identity.tenant_id))

    return JSONResponse({"data": await context_of(request).read(rows)})


async def create_company(request: Request) -> Response:
    """Add a company with its domains (``company add``); 201 with the company."""
    identity = await identify(request)
    require_writer(identity)
    body = await json_object(request, {"name", "domains"})
    name = text_field(body, "name", required=True) or ""
    domains = list_field(body, "domains")

    def add(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        try:
            company = directory.add_new_company(session, tenant, name, domains)
        except directory.CompanyExistsError as exc:
            raise ProblemError(409, f"name: {exc}", field="name") from exc
        except DirectoryError as exc:
            raise invalid(exc, "domains") from exc
        return queries.company(session, company)

    record = await context_of(request).write(add)
    return JSONResponse(
        record, status_code=201, headers={"Location": f"/v1/companies/{record['id']}"}
    )


async def get_company(request: Request) -> Response:
    """One company with its contacts (``company show``)."""
    identity = await identify(request)
    company_id = path_id(request, "company_id")

    def show(session: Session) -> dict[str, Any]:
        return queries.company(session, _find(session, identity.tenant_id, company_id))

    return JSONResponse(await context_of(request).read(show))


async def update_company(request: Request) -> Response:
    """Rename, or add and remove domains (``company set``)."""
    identity = await identify(request)
    require_writer(identity)
    company_id = path_id(request, "company_id")
    body = await json_object(request, {"name", "add_domains", "remove_domains"})
    name = text_field(body, "name")
    add = list_field(body, "add_domains")
    remove = list_field(body, "remove_domains")
    if name is None and not add and not remove:
        raise ProblemError(422, "say what to change: name, add_domains or remove_domains")

    def change(session: Session) -> dict[str, Any]:
        tenant = tenant_row(session, identity.tenant_id)
        company = _find(session, identity.tenant_id, company_id)
        steps: list[tuple[str, dict[str, Any]]] = [
            ("name", {"name": name}),
            ("add_domains", {"add_domains": add}),
            ("remove_domains", {"remove_domains": remove}),
        ]
        for field, values in steps:
            if not any(v not in (None, []) for v in values.values()):
                continue
            try:
                directory.set_company(session, tenant, company, **values)
            except DirectoryError as exc:
                raise invalid(exc, field) from exc
        return queries.company(session, company)

    return JSONResponse(await context_of(request).write(change))


async def delete_company(request: Request) -> Response:
    """Delete a company and its domains; its contacts stay, without one (``company remove``)."""
    identity = await identify(request)
    require_writer(identity)
    only_params(request, set())
    company_id = path_id(request, "company_id")

    def remove(session: Session) -> dict[str, Any]:
        company = _find(session, identity.tenant_id, company_id)
        name = company.name
        kept = directory.remove_company(session, company)
        return {"id": company_id, "name": name, "removed": True, "contacts_kept": kept}

    return JSONResponse(await context_of(request).write(remove))


async def one_company(request: Request) -> Response:
    """GET, PATCH or DELETE one company."""
    if request.method == "PATCH":
        return await update_company(request)
    if request.method == "DELETE":
        return await delete_company(request)
    return await get_company(request)


async def companies(request: Request) -> Response:
    """GET the list or POST a new company."""
    if request.method == "POST":
        return await create_company(request)
    return await list_companies(request)


ROUTES = [
    Route("/v1/companies", companies, methods=["GET", "POST"]),
    Route("/v1/companies/{company_id:int}", one_company, methods=["GET", "PATCH", "DELETE"]),
]
